"""Environments behind one contract (see ``envs/base.py``).

``make_env(env_cfg)`` builds the env that a config names: ``env.simulator=mujoco`` (the default) the
built-in MuJoCo tasks, ``env.simulator=isaaclab`` the same tasks in Isaac Lab 3.0 (an optional extra
on Python 3.12, imported lazily: envs/isaaclab/).
"""

from __future__ import annotations

from typing import Any

from envs.base import ConfigError


def make_env(env_cfg: Any, **overrides):
    """Build a batched env from an env config (a dict or an OmegaConf node); ``overrides`` win."""
    from envs.mujoco.config import parse_task_config
    from envs.mujoco.vec_env import MujocoVecEnv

    data = env_config_dict(env_cfg)
    data.update(overrides)
    device = data.pop("device", "cpu")
    simulator = data.pop("simulator")
    sim_device = data.pop("sim_device", "cpu")  # Isaac Lab's physics device; the task logic runs on the CPU
    if simulator == "isaaclab":
        from envs.isaaclab import OPEN

        if OPEN["simulations"]:  # Isaac Lab runs one simulation per process: a second env gets its own
            from envs.subprocess_env import SubprocessEnv

            return SubprocessEnv({**data, "simulator": simulator, "sim_device": sim_device, "device": device})
        from envs.isaaclab.task_env import IsaacLabTaskEnv

        return IsaacLabTaskEnv(parse_task_config(data), device=device, sim_device=sim_device)
    if simulator != "mujoco":
        raise ConfigError(f"env.simulator={simulator!r}; choose mujoco or isaaclab")
    return MujocoVecEnv(parse_task_config(data), device=device)


def env_config_dict(cfg: Any) -> dict:
    """A plain, resolved dict of an env config (what checkpoints and datasets record), with its
    ``simulator`` and ``sim_device`` (``mujoco`` and ``cpu`` where a config, or an older record, names none)."""
    data = _to_dict(cfg)
    data.setdefault("simulator", "mujoco")
    data.setdefault("sim_device", "cpu")
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
