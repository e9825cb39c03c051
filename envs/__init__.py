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


def env_config_with(cfg: Any, perturbations: Any = None, **overrides) -> dict:
    """``env_config_dict(cfg)`` with a stage's perturbation overlay (``teacher.train_perturbations``,
    ``collect.perturbations``, ``eval.perturbations``) merged into its ``perturbations`` and the
    top-level ``overrides`` (e.g. ``num_envs``) set."""
    data = env_config_dict(cfg)
    if perturbations is not None:
        data["perturbations"] = {**data.get("perturbations", {}), **_to_dict(perturbations)}
    return {**data, **overrides}


def _to_dict(cfg: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    return dict(cfg)
