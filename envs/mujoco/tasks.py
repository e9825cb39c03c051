"""What each task rewards and calls success, as numpy functions of the env's frame.

Frame arrays (N envs, O objects = movable cubes then the base, C movable cubes):
``grip_pos`` (N, 3) grasp point, ``obj_pos`` (N, O, 3), ``half`` (N, O) cube half sizes,
``held`` (N, O) bool, ``known_static`` (N, O) bool (static and revealed to the teacher).

Dense reward (documented in the README), summed per step:
  reach  * (1 - tanh(10 * |grasp point - target cube|))
  grasp  * [target cube held]
  lift   * [held] * min(1, height / lift_height)                       (lift)
  place  * [held] * (1 - tanh(10 * |cube - slot above the tower|))      (stack)
  stacked * number of tower levels filled                               (stack)
  on success (the condition held for ``hold_steps`` steps) the episode terminates with
  ``success_bonus + max_step_reward * episode_length``: success is worth more than collecting the
  largest dense reward for a whole episode, so hovering just below the line never pays more than
  crossing it. (A fixed bonus of 50 lost to hovering in a PPO probe: the return rose while the
  success rate fell.) The bonus does not shrink with the steps left: PPO bootstraps time-outs with
  the critic's value of the last state, and a bonus that shrank towards the time limit made
  hovering until the time-out worth more than succeeding late (a curriculum that starts episodes
  late in their time made the StackPickMulti teacher unlearn the release that way).
"""

from __future__ import annotations

import numpy as np

from envs.mujoco.config import TaskConfig


def _reach(f, target: np.ndarray) -> np.ndarray:
    pos = f.obj_pos[np.arange(f.n_envs), target]
    return 1.0 - np.tanh(10.0 * np.linalg.norm(pos - f.grip_pos, axis=1))


def tower_slots(f, n_stack: int) -> np.ndarray:
    """Centre of each tower level on the base: (N, K, 3)."""
    base = f.obj_pos[:, f.n_cubes]  # (N, 3)
    h = f.half[:, f.n_cubes]  # all cubes of an episode share one size
    levels = np.arange(1, n_stack + 1)
    slots = np.repeat(base[:, None, :], n_stack, axis=1)
    slots[..., 2] = base[:, None, 2] + 2.0 * h[:, None] * levels[None, :]
    return slots


def on_levels(f, cfg: TaskConfig) -> np.ndarray:
    """(N, C, K) bool: movable cube c rests in tower level k (within the placement tolerance).

    Cached on the frame: attempts, success and reward all ask for it within one step."""
    cached = getattr(f, "_on_levels", None)
    if cached is not None:
        return cached
    slots = tower_slots(f, cfg.n_stack)  # (N, K, 3)
    d = f.obj_pos[:, : f.n_cubes, None, :] - slots[:, None, :, :]  # (N, C, K, 3)
    tol = cfg.success.place_tolerance
    f._on_levels = (np.linalg.norm(d[..., :2], axis=-1) < tol) & (np.abs(d[..., 2]) < tol)
    return f._on_levels


class LiftTask:
    """Lift-v1 (one cube) and PickLoose-v1 (several, some welded): lift a cube 10 cm and hold it.

    With several cubes any cube counts: a welded one cannot rise, so success means a liftable one was
    lifted. The dense terms follow the target cube: the held one, else the nearest cube not known to be
    static (in the revealed view the teacher learns a cube is welded only by trying it, so the reward
    leads it to try the nearest and then, once revealed, to the other). One cube: always cube 0."""

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    def placed(self, f) -> np.ndarray:
        return np.zeros((f.n_envs, f.n_cubes), bool)

    def height(self, f) -> np.ndarray:
        """(N, C) bottom of each movable cube above the table."""
        C = f.n_cubes
        return f.obj_pos[:, :C, 2] - f.half[:, :C]

    def success_condition(self, f) -> np.ndarray:
        C = f.n_cubes
        return ((self.height(f) >= self.cfg.success.lift_height) & f.held[:, :C]).any(1)

    def target_cube(self, f) -> np.ndarray:
        C = f.n_cubes
        if C == 1:
            return np.zeros(f.n_envs, int)
        dist = np.linalg.norm(f.obj_pos[:, :C] - f.grip_pos[:, None], axis=2)
        target = np.where(f.known_static[:, :C], dist + 10.0, dist).argmin(1)
        held = f.held[:, :C]
        return np.where(held.any(1), held.argmax(1), target)

    def max_step_reward(self) -> float:
        w = self.cfg.reward
        return w.reach + w.grasp + w.lift

    def reward(self, f) -> np.ndarray:
        w, n = self.cfg.reward, np.arange(f.n_envs)
        target = self.target_cube(f)
        held = f.held[n, target].astype(np.float64)
        lifted = np.clip(self.height(f)[n, target] / self.cfg.success.lift_height, 0.0, 1.0)
        return w.reach * _reach(f, target) + w.grasp * held + w.lift * held * lifted


class StackTask:
    """Stack-v1 / StackPickMulti-v1: stack ``n_stack`` of the movable cubes on the base, released."""

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    def placed(self, f) -> np.ndarray:
        return on_levels(f, self.cfg).any(2)

    def levels_filled(self, f) -> np.ndarray:
        filled = on_levels(f, self.cfg).any(1)  # (N, K)
        return np.cumprod(filled, axis=1).sum(1)  # consecutive levels from the bottom

    def success_condition(self, f) -> np.ndarray:
        return (self.levels_filled(f) >= self.cfg.n_stack) & ~f.held.any(1)

    def target_cube(self, f) -> np.ndarray:
        """The held cube, else the nearest cube that is neither placed nor known to be static."""
        C = f.n_cubes
        dist = np.linalg.norm(f.obj_pos[:, :C] - f.grip_pos[:, None], axis=2)
        dist = np.where(self.placed(f) | f.known_static[:, :C], dist + 10.0, dist)
        target = dist.argmin(1)
        held = f.held[:, :C]
        return np.where(held.any(1), held.argmax(1), target)

    def max_step_reward(self) -> float:
        w = self.cfg.reward
        return w.reach + w.grasp + w.place + w.stacked * self.cfg.n_stack

    def reward(self, f) -> np.ndarray:
        w, n = self.cfg.reward, np.arange(f.n_envs)
        target = self.target_cube(f)
        held = f.held[n, target].astype(np.float64)
        filled = self.levels_filled(f)
        slots = tower_slots(f, self.cfg.n_stack)
        next_slot = slots[n, np.minimum(filled, self.cfg.n_stack - 1)]
        place = 1.0 - np.tanh(10.0 * np.linalg.norm(f.obj_pos[n, target] - next_slot, axis=1))
        return (w.reach * _reach(f, target) + w.grasp * held + w.place * held * place
                + w.stacked * filled)


def make_task(cfg: TaskConfig):
    return LiftTask(cfg) if cfg.task == "lift" else StackTask(cfg)
