import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def env_config(name: str, **overrides) -> dict:
    """The yaml of configs/env/<name>.yaml with the seed filled in and ``overrides`` merged (nested dicts merge)."""
    cfg = yaml.safe_load((ROOT / "configs" / "env" / f"{name}.yaml").read_text())
    cfg["seed"] = 0
    cfg.pop("simulator", None)
    cfg.pop("sim_device", None)
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def make():
    from envs import make_env

    made = []

    def _make(name: str, **overrides):
        env = make_env(env_config(name, **overrides))
        made.append(env)
        return env

    yield _make
    for env in made:
        env.close()
