"""Where Isaac Lab is not installed (the core venv), asking for it is one clear error, not a traceback."""

import importlib.util

import pytest

from envs import make_env
from envs.base import ConfigError
from tests.conftest import env_config


@pytest.mark.skipif(importlib.util.find_spec("isaaclab") is not None, reason="isaaclab is installed here")
def test_isaaclab_env_without_isaaclab_names_the_fix():
    with pytest.raises(ConfigError, match=r"make isaaclab.*\.venv-isaaclab/bin/python"):
        make_env({**env_config("lift", num_envs=1), "simulator": "isaaclab"})


def test_unknown_simulator_is_refused():
    with pytest.raises(ConfigError, match="env.simulator='gazebo'; choose mujoco or isaaclab"):
        make_env({**env_config("lift", num_envs=1), "simulator": "gazebo"})
