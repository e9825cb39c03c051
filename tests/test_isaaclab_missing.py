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


@pytest.mark.skipif(importlib.util.find_spec("isaaclab") is not None, reason="isaaclab is installed here")
def test_pipeline_with_isaaclab_missing_exits_2_and_writes_nothing(tmp_path):
    from tests.test_pipeline import pipeline

    r = pipeline("stage=teacher", "teacher=scripted", "env.simulator=isaaclab", f"run_dir={tmp_path / 'run'}",
                 "logger.mode=disabled")
    assert r.returncode == 2 and "make isaaclab" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
