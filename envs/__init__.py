"""Environments behind one contract (see ``envs/base.py``).

``make_env(env_cfg)`` builds the env that a config names: the built-in MuJoCo tasks here, the
Isaac Lab wrapper (optional extra, imported lazily) later.
"""

from __future__ import annotations

from typing import Any


def make_env(env_cfg: Any, **overrides):
    """Build a batched env from an env config (a dict or an OmegaConf node); ``overrides`` win."""
    from envs.mujoco.config import parse_task_config
    from envs.mujoco.vec_env import MujocoVecEnv

    data = env_config_dict(env_cfg)
    data.update(overrides)
    device = data.pop("device", "cpu")
    return MujocoVecEnv(parse_task_config(data), device=device)


def env_config_dict(cfg: Any) -> dict:
    """A plain, resolved dict of an env config (what checkpoints and datasets record)."""
    data = _to_dict(cfg)
    data.pop("simulator", None)
    return data


def _to_dict(cfg: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    return dict(cfg)
