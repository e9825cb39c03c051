"""Observation terms and groups, declared in the env yaml rather than in code.

``observations:`` in ``configs/env/*.yaml`` maps each group to its terms and their options::

    policy:
      gripper_pos: {noise: 0.002}
      cube_pos: {noise: 0.005, occlude: true}   # zeroed while the cube is occluded
      cube_visible: {}

``noise`` is the std of added Gaussian noise (in the term's units), ``scale`` multiplies the value
(a fixed normalisation), ``occlude`` zeroes a cube term while that cube is hidden. Terms are laid out
entity by entity (gripper, cube0, cube1, ..., base, task) so a transformer can slice one token per
entity from the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs import rng
from envs.base import ConfigError, ObsSpec, ObsTerm

# term -> (entity kind, width). Entity kinds: gripper, cube (one per movable cube), base, task.
TERMS: dict[str, tuple[str, int]] = {
    "gripper_pos": ("gripper", 3),
    "gripper_yaw": ("gripper", 1),
    "gripper_heading": ("gripper", 2),  # sin and cos of the yaw: smooth where the angle wraps
    "gripper_opening": ("gripper", 1),
    "gripper_vel": ("gripper", 3),
    "gripper_closed": ("gripper", 1),
    "cube_pos": ("cube", 3),
    "cube_rel": ("cube", 3),  # cube minus grasp point
    "cube_yaw": ("cube", 2),  # sin and cos of 4*yaw: a cube looks the same every 90 degrees
    "cube_yaw_rel": ("cube", 2),  # sin and cos of 4*(cube yaw - gripper yaw): the turn a grasp needs
    "cube_vel": ("cube", 3),
    "cube_size": ("cube", 1),
    "cube_held": ("cube", 1),
    "cube_visible": ("cube", 1),
    "cube_hidden": ("cube", 4),  # known flag, mass, friction, static; zero until revealed (revealed view)
    "base_pos": ("base", 3),
    "base_rel": ("base", 3),
    "time": ("task", 1),  # fraction of the episode elapsed
}
OPTIONS = {"noise", "scale", "occlude"}


@dataclass(frozen=True)
class _TermCfg:
    name: str
    noise: float
    scale: float
    occlude: bool


def _sin_cos(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(angle), np.cos(angle)], -1)


def _term_values(name: str, f) -> np.ndarray:
    """Value of one term from the frame ``f``: (N, w) for gripper/base/task terms, (N, C, w) for cubes."""
    C = f.n_cubes
    if name == "gripper_pos":
        return f.grip_pos
    if name == "gripper_yaw":
        return f.grip_yaw[:, None]
    if name == "gripper_heading":
        return _sin_cos(f.grip_yaw)
    if name == "gripper_opening":
        return f.fingers.sum(1, keepdims=True)
    if name == "gripper_vel":
        return f.grip_vel
    if name == "gripper_closed":
        return f.closed[:, None].astype(np.float64)
    if name == "cube_pos":
        return f.obj_pos[:, :C]
    if name == "cube_rel":
        return f.obj_pos[:, :C] - f.grip_pos[:, None, :]
    if name == "cube_yaw":
        return _sin_cos(4.0 * f.obj_yaw[:, :C])
    if name == "cube_yaw_rel":
        return _sin_cos(4.0 * (f.obj_yaw[:, :C] - f.grip_yaw[:, None]))
    if name == "cube_vel":
        return f.obj_vel[:, :C]
    if name == "cube_size":
        return 2.0 * f.half[:, :C, None]
    if name == "cube_held":
        return f.held[:, :C, None].astype(np.float64)
    if name == "cube_visible":
        return f.visible[:, :C, None].astype(np.float64)
    if name == "cube_hidden":
        known = f.known[:, :C, None].astype(np.float64)
        props = np.stack([np.ones_like(f.mass[:, :C]), f.mass[:, :C], f.friction[:, :C],
                          f.static[:, :C].astype(np.float64)], -1)
        return props * known
    if name == "base_pos":
        return f.obj_pos[:, C]
    if name == "base_rel":
        return f.obj_pos[:, C] - f.grip_pos
    if name == "time":
        return f.time_frac[:, None]
    raise KeyError(name)


class ObservationManager:
    """Builds the obs spec from config and computes every group in one pass per step."""

    def __init__(self, groups_cfg: dict, n_cubes: int, has_base: bool):
        if not groups_cfg:
            raise ConfigError("env.observations is empty; declare at least the 'policy' and 'privileged' groups")
        for required in ("policy", "privileged"):
            if required not in groups_cfg:
                raise ConfigError(f"env.observations has no {required!r} group; "
                                  f"both 'policy' and 'privileged' are required")
        self.n_cubes, self.has_base = n_cubes, has_base
        self.groups: dict[str, list[_TermCfg]] = {}
        for group, terms in groups_cfg.items():
            parsed = []
            for name, opts in (terms or {}).items():
                opts = dict(opts or {})
                if name not in TERMS:
                    raise ConfigError(f"env.observations.{group}.{name} is not a term; known terms: {sorted(TERMS)}")
                if set(opts) - OPTIONS:
                    raise ConfigError(f"env.observations.{group}.{name} has unknown options "
                                      f"{sorted(set(opts) - OPTIONS)}; allowed: {sorted(OPTIONS)}")
                if TERMS[name][0] == "base" and not has_base:
                    raise ConfigError(f"env.observations.{group}.{name} needs a base cube; this task has none")
                parsed.append(_TermCfg(name, float(opts.get("noise", 0.0)), float(opts.get("scale", 1.0)),
                                       bool(opts.get("occlude", False))))
            self.groups[group] = parsed
        self.spec = self._build_spec()
        self._noise_std = {g: self._column_vector(g, lambda t: t.noise) for g in self.groups}
        self._scale = {g: self._column_vector(g, lambda t: t.scale) for g in self.groups}
        # Per column: the cube whose occlusion zeroes it, or -1.
        self._occlusion_cube = {
            g: np.concatenate([np.full(TERMS[t.name][1], c if (t.occlude and c is not None) else -1)
                               for _, t, c in self._entity_layout(g)] or [np.zeros(0, int)]).astype(int)
            for g in self.groups}

    def _entity_layout(self, group: str) -> list[tuple[str, _TermCfg, int | None]]:
        """(entity name, term, cube index or None) in layout order: gripper, cubes, base, task."""
        terms = self.groups[group]
        out = [("gripper", t, None) for t in terms if TERMS[t.name][0] == "gripper"]
        for c in range(self.n_cubes):
            out += [(f"cube{c}", t, c) for t in terms if TERMS[t.name][0] == "cube"]
        out += [("base", t, None) for t in terms if TERMS[t.name][0] == "base"]
        out += [("task", t, None) for t in terms if TERMS[t.name][0] == "task"]
        return out

    def _build_spec(self) -> ObsSpec:
        spec = ObsSpec()
        for group in self.groups:
            start, entries = 0, []
            for entity, t, _ in self._entity_layout(group):
                width = TERMS[t.name][1]
                entries.append(ObsTerm(entity, t.name.split("_", 1)[-1] if entity != "task" else t.name,
                                       start, start + width))
                start += width
            spec.groups[group] = entries
        return spec

    def _column_vector(self, group: str, getter) -> np.ndarray:
        cols = [np.full(TERMS[t.name][1], getter(t)) for _, t, _ in self._entity_layout(group)]
        return np.concatenate(cols) if cols else np.zeros(0)

    def compute(self, f, env_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every group as float32 (N, D). ``f`` is the env's frame (see MujocoVecEnv._frame)."""
        values_cache: dict[str, np.ndarray] = {}
        out = {}
        for gi, group in enumerate(self.groups):
            cols = []
            for _, t, c in self._entity_layout(group):
                if t.name not in values_cache:
                    values_cache[t.name] = _term_values(t.name, f)
                v = values_cache[t.name]
                cols.append(v[:, c] if c is not None else v)
            obs = np.concatenate(cols, axis=1) if cols else np.zeros((f.n_envs, 0))
            std = self._noise_std[group]
            if std.any():
                noise = rng.normal(f.seeds, f.steps, rng.NOISE + 100 * gi, obs.shape[1])
                obs = obs + noise * std
            occluded_cols = self._occlusion_cube[group]
            if (occluded_cols >= 0).any():
                # After the noise, so a dropped value is exactly zero.
                keep = f.visible[:, np.maximum(occluded_cols, 0)] | (occluded_cols < 0)
                obs = obs * keep
            out[group] = (obs * self._scale[group]).astype(np.float32)
        return out
