"""Scripted privileged expert: a per-env state machine that grasps, lifts, places and retries.

It reads only the ``privileged`` observation group (through the obs spec), so it is a drop-in
teacher (``teacher=scripted``). It proves the tasks solvable, serves tests, and shows what a retry
looks like: after a lost grasp it backs off and grasps again lower and turned by 90 degrees; after a
lift attempt reveals a static cube it picks another cube.

Actions are raw: a proportional command ``error / action_scale`` that may exceed [-1, 1]; the env
clips at its boundary.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.base import ObsSpec

APPROACH, DESCEND, CLOSE, LIFT, CARRY, LOWER, RELEASE, RETREAT = range(8)
PHASE_TIMEOUT = 40  # steps in one phase before the expert gives up and retries
CLEARANCE = 0.07  # m above a cube when travelling


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


class ScriptedExpert:
    def __init__(self, obs_spec: ObsSpec, num_envs: int, task: str, n_cubes: int, n_stack: int,
                 action_scale_pos: float, action_scale_yaw: float, lift_height: float = 0.10):
        self.spec, self.N, self.task = obs_spec, num_envs, task
        self.C, self.K = n_cubes, n_stack
        self.scale = np.array([action_scale_pos] * 3 + [action_scale_yaw])
        self.lift_height = lift_height
        self.phase = np.zeros(num_envs, int)
        self.phase_steps = np.zeros(num_envs, int)
        self.target = np.zeros(num_envs, int)
        self.tries = np.zeros((num_envs, n_cubes), int)
        self._index = {(t.entity, t.name): (t.start, t.end) for t in obs_spec.groups["privileged"]}

    @classmethod
    def for_env(cls, env) -> ScriptedExpert:
        cfg = env.cfg
        return cls(env.obs_spec, env.num_envs, cfg.task, cfg.n_cubes, cfg.n_stack,
                   cfg.action_scale_pos, cfg.action_scale_yaw, cfg.success.lift_height)

    def reset(self, done) -> None:
        ids = np.nonzero(np.asarray(torch.as_tensor(done).cpu()))[0]
        self.phase[ids] = APPROACH
        self.phase_steps[ids] = 0
        self.target[ids] = 0
        self.tries[ids] = 0

    def _get(self, obs: np.ndarray, entity: str, name: str) -> np.ndarray:
        a, b = self._index[(entity, name)]
        return obs[:, a:b]

    def act(self, obs: dict) -> torch.Tensor:
        o = np.asarray(obs["privileged"].cpu(), dtype=np.float64)
        N, n = self.N, np.arange(self.N)
        grip = self._get(o, "gripper", "pos")
        yaw = self._get(o, "gripper", "yaw")[:, 0]
        cubes = np.stack([self._get(o, f"cube{c}", "pos") for c in range(self.C)], 1)  # (N, C, 3)
        cube_yaw = np.stack([np.arctan2(*self._get(o, f"cube{c}", "yaw").T) / 4 for c in range(self.C)], 1)
        held = np.stack([self._get(o, f"cube{c}", "held")[:, 0] for c in range(self.C)], 1) > 0.5
        hidden = np.stack([self._get(o, f"cube{c}", "hidden") for c in range(self.C)], 1)
        known_static = (hidden[..., 0] > 0.5) & (hidden[..., 3] > 0.5)
        half = self._get(o, "cube0", "size")[:, 0] / 2
        if self.task == "stack":
            base = self._get(o, "base", "pos")
            slots = base[:, None, :] + np.zeros((1, self.K, 3))
            slots[..., 2] = base[:, None, 2] + 2 * half[:, None] * np.arange(1, self.K + 1)
            on_tower = (np.linalg.norm(cubes[:, :, None, :2] - slots[:, None, :, :2], axis=-1) < 0.015).any(2) & \
                       (cubes[..., 2] > base[:, None, 2] + half[:, None]) & ~held  # the carried cube is not placed
        else:
            on_tower = np.zeros((N, self.C), bool)

        # Choose a cube when starting an approach: nearest one that is neither placed nor known static.
        choosing = self.phase == APPROACH
        dist = np.linalg.norm(cubes - grip[:, None], axis=2) + 10.0 * (on_tower | known_static) + 0.05 * self.tries
        self.target = np.where(choosing, dist.argmin(1), self.target)
        t = self.target
        cube, cyaw, tries = cubes[n, t], cube_yaw[n, t], self.tries[n, t]
        grasp_yaw = _wrap(cyaw + (np.pi / 2) * (tries % 2))
        grasp_yaw = np.where(np.abs(_wrap(grasp_yaw - yaw)) > np.pi / 2, _wrap(grasp_yaw + np.pi), grasp_yaw)
        grasp_z = cube[:, 2] - np.minimum(0.004 * tries, 0.008)

        goal = np.concatenate([grip, yaw[:, None]], 1)
        p = self.phase
        if self.task == "stack":
            n_placed = on_tower.sum(1)
            slot = slots[n, np.minimum(n_placed, self.K - 1)]
        else:
            slot = np.zeros((N, 3))

        def at(xyz, tol):
            return np.linalg.norm(xyz - grip, axis=1) < tol

        above = cube.copy()
        above[:, 2] = cube[:, 2] + CLEARANCE
        lift_to = cube.copy()
        lift_to[:, 2] = half + self.lift_height + 0.03
        carry = slot.copy()
        carry[:, 2] = slot[:, 2] + 0.05
        place = slot.copy()
        place[:, 2] = slot[:, 2] + 0.003
        grasp_point = np.concatenate([cube[:, :2], grasp_z[:, None]], 1)
        high = grip.copy()
        high[:, 2] = np.maximum(grip[:, 2], np.maximum(cube[:, 2], slot[:, 2]) + CLEARANCE)

        targets = {APPROACH: above, DESCEND: grasp_point, CLOSE: grasp_point, LIFT: lift_to,
                   CARRY: carry, LOWER: place, RELEASE: place, RETREAT: high}
        for ph, xyz in targets.items():
            sel = p == ph
            goal[sel, :3] = xyz[sel]
        goal[:, 3] = np.where(np.isin(p, [APPROACH, DESCEND, CLOSE]), grasp_yaw, yaw)
        close = np.isin(p, [CLOSE, LIFT, CARRY, LOWER])
        yaw_ok = np.abs(_wrap(grasp_yaw - yaw)) < 0.08

        # Transitions.
        nxt = p.copy()
        nxt[(p == APPROACH) & at(above, 0.012) & yaw_ok] = DESCEND
        nxt[(p == DESCEND) & at(grasp_point, 0.006)] = CLOSE
        nxt[(p == CLOSE) & (self.phase_steps >= 4)] = LIFT
        lifted = grip[:, 2] >= lift_to[:, 2] - 0.01
        if self.task == "stack":
            nxt[(p == LIFT) & held[n, t] & lifted] = CARRY
            nxt[(p == CARRY) & at(carry, 0.008)] = LOWER
            nxt[(p == LOWER) & (at(place, 0.006) | (self.phase_steps >= 15))] = RELEASE
            nxt[(p == RELEASE) & (self.phase_steps >= 4)] = RETREAT
        carrying = np.isin(p, [LIFT, CARRY, LOWER]) & (self.phase_steps >= 3)
        dropped = carrying & ~held[n, t]
        stuck = (self.phase_steps >= PHASE_TIMEOUT) & ~((p == LIFT) & (self.task == "lift"))
        failed = dropped | (stuck & (p != RETREAT))
        self.tries[n[failed], t[failed]] += 1
        nxt[failed] = RETREAT
        nxt[(p == RETREAT) & (grip[:, 2] >= high[:, 2] - 0.01)] = APPROACH
        self.phase_steps = np.where(nxt == p, self.phase_steps + 1, 0)
        self.phase = nxt

        action = np.zeros((N, 5))
        action[:, :3] = (goal[:, :3] - grip) / self.scale[:3]
        action[:, 3] = _wrap(goal[:, 3] - yaw) / self.scale[3]
        action[:, 4] = np.where(close, 1.0, -1.0)
        return torch.from_numpy(action.astype(np.float32))
