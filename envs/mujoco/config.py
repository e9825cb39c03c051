"""Typed task configuration, built from the env's yaml (configs/env/*.yaml) and validated once.

A wrong value fails here with a ``ConfigError`` that names the key and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from envs.base import ConfigError

TASKS = {"lift", "stack"}
HIDDEN_VIEWS = {"revealed", "omniscient"}


@dataclass
class CubeCfg:
    half_size: tuple[float, float] = (0.02, 0.02)  # per-episode range, m
    mass: tuple[float, float] = (0.05, 0.25)  # kg
    friction: tuple[float, float] = (0.6, 1.2)  # sliding friction of the cube (it wins contacts)
    static_prob: float = 0.0  # chance that a movable cube is welded to the table
    # Exactly this many cubes welded per episode, drawn uniformly among the cubes (instead of
    # static_prob): with 2 cubes and 1, every episode is a coin flip that only a lift attempt settles.
    static_count: int | None = None


@dataclass
class LayoutCfg:
    xy_range: float = 0.12  # cubes spawn in [-r, r]^2
    min_separation: float = 0.08
    gripper_start: tuple[float, float, float] = (0.0, 0.0, 0.15)
    gripper_start_noise: float = 0.03


@dataclass
class SuccessCfg:
    lift_height: float = 0.10  # cube bottom above the table, m
    hold_steps: int = 5  # consecutive steps the success condition must hold
    place_tolerance: float = 0.015  # xy and z tolerance of a stacked cube, m


@dataclass
class RewardCfg:
    reach: float = 1.0
    grasp: float = 1.0
    lift: float = 2.0
    place: float = 2.0
    stacked: float = 2.0  # per cube already on the tower
    success_bonus: float = 50.0
    scale: float = 1.0  # multiplies the whole reward; keeps returns O(1) for the critic


@dataclass
class PerturbationCfg:
    drop_rate: float = 0.0  # per step while a cube is held: force the gripper open
    drop_steps: int = 6
    push_rate: float = 0.0  # per step: kick a random movable cube sideways
    push_speed: float = 0.3  # m/s
    noise_rate: float = 0.0  # per step: start a burst of action noise
    noise_steps: int = 5
    noise_std: float = 0.5


@dataclass
class OcclusionCfg:
    rate: float = 0.0  # per step and visible cube: chance an occlusion window starts
    min_steps: int = 3
    max_steps: int = 10


@dataclass
class TaskConfig:
    name: str = "Lift-v1"
    task: str = "lift"
    num_envs: int = 16
    seed: int = 0
    episode_length: int = 200  # control steps (20 Hz)
    n_cubes: int = 1  # movable cubes
    n_stack: int = 0  # cubes to stack on the base (stack task)
    timestep: float = 0.005
    substeps: int = 10
    num_threads: int = 0  # 0: one per CPU core
    action_scale_pos: float = 0.02  # m per step at |action| = 1
    action_scale_yaw: float = 0.1  # rad per step at |action| = 1
    hidden_view: str = "revealed"
    cube: CubeCfg = field(default_factory=CubeCfg)
    layout: LayoutCfg = field(default_factory=LayoutCfg)
    success: SuccessCfg = field(default_factory=SuccessCfg)
    reward: RewardCfg = field(default_factory=RewardCfg)
    perturbations: PerturbationCfg = field(default_factory=PerturbationCfg)
    occlusion: OcclusionCfg = field(default_factory=OcclusionCfg)
    observations: dict = field(default_factory=dict)  # group -> term -> options

    @property
    def has_base(self) -> bool:
        return self.task == "stack"

    @property
    def control_dt(self) -> float:
        return self.timestep * self.substeps


def _build(cls, data: dict, path: str):
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown env config key env.{path}{sorted(unknown)[0]}; known keys: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else known[name].default
        if is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"env.{path}{name} must be a mapping, got {value!r}")
            kwargs[name] = _build(type(default), value, f"{path}{name}.")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise ConfigError(f"env.{path}{name} must be a list of {len(default)} numbers, got {value!r}")
            kwargs[name] = tuple(float(v) for v in value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _check_range(value: tuple[float, float], name: str, lo: float, hi: float) -> None:
    a, b = value
    if not (lo <= a <= b <= hi):
        raise ConfigError(f"{name}={list(value)} must satisfy {lo} <= low <= high <= {hi}")


def parse_task_config(data: dict) -> TaskConfig:
    """Build and validate a TaskConfig from a plain dict (e.g. ``OmegaConf.to_container(cfg.env)``)."""
    cfg = _build(TaskConfig, dict(data), "")
    if cfg.task not in TASKS:
        raise ConfigError(f"env.task={cfg.task!r} is not a task; choose one of {sorted(TASKS)}")
    if cfg.hidden_view not in HIDDEN_VIEWS:
        raise ConfigError(f"env.hidden_view={cfg.hidden_view!r}; choose one of {sorted(HIDDEN_VIEWS)}")
    if not isinstance(cfg.num_envs, int) or cfg.num_envs < 1:
        raise ConfigError(f"env.num_envs={cfg.num_envs!r} must be a positive integer")
    if cfg.episode_length < 1 or cfg.substeps < 1 or cfg.timestep <= 0:
        raise ConfigError("env.episode_length, env.substeps and env.timestep must be positive")
    if cfg.task == "lift" and not 1 <= cfg.n_cubes <= 6:
        raise ConfigError(f"env.n_cubes={cfg.n_cubes} must be between 1 and 6 for the lift task")
    if cfg.task == "stack":
        if not 1 <= cfg.n_cubes <= 6:
            raise ConfigError(f"env.n_cubes={cfg.n_cubes} must be between 1 and 6 for the stack task")
        if not 1 <= cfg.n_stack <= cfg.n_cubes:
            raise ConfigError(f"env.n_stack={cfg.n_stack} must be between 1 and env.n_cubes={cfg.n_cubes}")
    _check_range(cfg.cube.half_size, "env.cube.half_size", 0.012, 0.03)
    _check_range(cfg.cube.mass, "env.cube.mass", 0.005, 5.0)
    _check_range(cfg.cube.friction, "env.cube.friction", 0.05, 3.0)
    for name, rate in [("cube.static_prob", cfg.cube.static_prob), ("occlusion.rate", cfg.occlusion.rate),
                       ("perturbations.drop_rate", cfg.perturbations.drop_rate),
                       ("perturbations.push_rate", cfg.perturbations.push_rate),
                       ("perturbations.noise_rate", cfg.perturbations.noise_rate)]:
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"env.{name}={rate} must be a probability in [0, 1]")
    needed = max(cfg.n_stack, 1)  # liftable cubes the task needs (lift: one)
    if cfg.cube.static_prob > 0 and cfg.n_cubes <= needed:
        raise ConfigError(f"env.cube.static_prob > 0 needs spare cubes; {cfg.task} with env.n_cubes={cfg.n_cubes} "
                          f"needs all {needed} liftable; add cubes or set static_prob 0")
    count = cfg.cube.static_count
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= cfg.n_cubes - needed:
            raise ConfigError(f"env.cube.static_count={count!r} must be an integer in [0, {cfg.n_cubes - needed}] "
                              f"(env.n_cubes={cfg.n_cubes}, {needed} must stay liftable), or null")
        if cfg.cube.static_prob > 0:
            raise ConfigError("env.cube.static_count and env.cube.static_prob are exclusive; set static_prob 0 "
                              "or static_count null")
    if cfg.occlusion.min_steps < 1 or cfg.occlusion.max_steps < cfg.occlusion.min_steps:
        raise ConfigError("env.occlusion needs 1 <= min_steps <= max_steps")
    n_objects = cfg.n_cubes + int(cfg.has_base)
    side = 2 * cfg.layout.xy_range
    if n_objects * cfg.layout.min_separation**2 > 0.5 * side * side:
        raise ConfigError(f"env.layout.xy_range={cfg.layout.xy_range} is too small for {n_objects} cubes "
                          f"{cfg.layout.min_separation} m apart; raise xy_range or lower min_separation")
    return cfg
