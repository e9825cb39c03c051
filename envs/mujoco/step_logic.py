"""One control step of ``MujocoVecEnv``: read top to bottom, it is the whole task dynamics.

1. injected failures start (drop, push, noise burst), drawn from the episode's counter-based RNG;
2. the raw action gets the noise burst, then is clipped to [-1, 1]: the env boundary, the only clip;
3. the servo targets move by the scaled action; the gripper closes when the action's last entry > 0;
4. physics: ``substeps`` MuJoCo steps in threads;
5. task bookkeeping: held cubes, attempts (a grasp lost, with the cube not placed within
   ``SETTLE_STEPS``, starts a new attempt), hidden properties revealed by a lift attempt, occlusion;
6. reward, success (condition held for ``hold_steps``), failures (a cube off the table, a physics
   blow-up), time-outs; observations; auto-reset of finished envs.
"""

from __future__ import annotations

import numpy as np
import torch

from envs import rng
from envs.mujoco import scene

LIFT_TRIED = 0.015  # m the gripper rose above its grasp height: a lift was attempted, properties revealed
MAX_TARGET_LEAD = 0.03  # m the position target may run ahead of the gripper (no wind-up against the table)
MAX_YAW_LEAD = 0.2  # rad
SETTLE_STEPS = 6  # a released cube that is not placed within this many steps is a failed attempt
LOST_BELOW = -0.05  # m: an object this far below the table top has fallen off


def _start_perturbations(env, u: np.ndarray) -> dict[str, np.ndarray]:
    p, st, N = env.cfg.perturbations, env.st, env.num_envs
    held_any = st["held_prev"][:, : env.n_cubes].any(1)
    drop = (u[:, 0] < p.drop_rate) & held_any & (st["drop_left"] == 0)
    st["drop_left"][drop] = p.drop_steps
    noise = (u[:, 1] < p.noise_rate) & (st["noise_left"] == 0)
    st["noise_left"][noise] = p.noise_steps
    push = u[:, 2] < p.push_rate
    env._kick[:] = 0
    env._kicked = set(np.nonzero(push)[0].tolist())
    if push.any():
        cube = np.minimum((u[:, 3] * env.n_cubes).astype(int), env.n_cubes - 1)
        angle = 2 * np.pi * u[:, 4]
        kick = p.push_speed * np.stack([np.cos(angle), np.sin(angle), np.zeros(N)], 1)
        env._kick[np.nonzero(push)[0], cube[push]] = kick[push]
    return {"drop": drop, "push": push, "noise": noise}


def _set_servo_targets(env, action_raw: np.ndarray) -> None:
    cfg, st = env.cfg, env.st
    action = action_raw.copy()
    bursting = st["noise_left"] > 0
    if bursting.any():
        noise = rng.normal(env.seeds, st["step"].astype(np.uint64), rng.PERTURB + 1, action.shape[1])
        action[bursting] += cfg.perturbations.noise_std * noise[bursting]
    action = np.clip(action, -1.0, 1.0)  # the env boundary: the one place actions are clipped
    scale = np.array([cfg.action_scale_pos] * 3 + [cfg.action_scale_yaw])
    now = env._qpos[:, 0:4]
    lead = np.array([MAX_TARGET_LEAD] * 3 + [MAX_YAW_LEAD])
    target = np.clip(env.target + action[:, :4] * scale, now - lead, now + lead)
    env.target[:] = np.clip(target, env._jnt_lo, env._jnt_hi)
    st["closed"][:] = (action[:, 4] > 0) & (st["drop_left"] == 0)
    fingers = np.where(st["closed"] > 0, 0.0, scene.FINGER_OPEN)
    env._ctrl[:, 0:4] = env.target
    env._ctrl[:, 4] = env._ctrl[:, 5] = fingers
    st["drop_left"] = np.maximum(st["drop_left"] - 1, 0)
    st["noise_left"] = np.maximum(st["noise_left"] - 1, 0)


def _update_attempts(env, f) -> None:
    st, C = env.st, env.n_cubes
    held, held_prev = f.held[:, :C], st["held_prev"][:, :C] > 0
    gz = f.grip_pos[:, 2:3]
    started = held & ~held_prev
    st["grasp_z"][:, :C] = np.where(started, gz, st["grasp_z"][:, :C])
    lifting = (held | held_prev) & (gz > st["grasp_z"][:, :C] + LIFT_TRIED)
    st["revealed"][:, :C] = np.maximum(st["revealed"][:, :C], lifting)
    # A release is judged once the cube had time to settle: dropped onto the tower from a little above
    # is a placement, not a failure. A lost grasp that leads nowhere starts a new attempt.
    placed = env.task.placed(f)
    wait = st["release_wait"][:, :C]
    wait[held_prev & ~held & ~placed] = SETTLE_STEPS
    wait[placed | held] = 0
    failed = wait == 1
    wait[:] = np.maximum(wait - 1, 0)
    st["attempt"] += failed.any(1)
    st["ever_touched"] = np.maximum(st["ever_touched"], held.any(1))
    st["held_prev"][:, :C] = held


def _update_occlusion(env, u: np.ndarray) -> None:
    occ, st = env.cfg.occlusion, env.st
    st["occl_left"] = np.maximum(st["occl_left"] - 1, 0)
    if occ.rate <= 0:
        return
    C = env.n_cubes
    start = (st["occl_left"][:, :C] == 0) & (u[:, :C] < occ.rate)
    length = occ.min_steps + np.floor(u[:, C: 2 * C] * (occ.max_steps - occ.min_steps + 1))
    st["occl_left"][:, :C] = np.where(start, length, st["occl_left"][:, :C])


def step(env, action: torch.Tensor):
    N, st, cfg = env.num_envs, env.st, env.cfg
    action_raw = np.asarray(torch.as_tensor(action).detach().cpu(), dtype=np.float64)
    if action_raw.shape != (N, env.num_actions):
        raise ValueError(f"action must have shape ({N}, {env.num_actions}), got {tuple(action_raw.shape)}")
    steps_before = st["step"].astype(np.uint64)
    # One draw per step for perturbation starts (5) and occlusion windows (2 per cube).
    u = rng.uniform(env.seeds, steps_before, rng.PERTURB, 5 + 2 * env.n_cubes)
    perturbations = _start_perturbations(env, u[:, :5])
    _set_servo_targets(env, action_raw)
    env._unstable[:] = False
    env._physics_step()
    st["step"] += 1

    f = env._frame()
    _update_attempts(env, f)
    _update_occlusion(env, u[:, 5:])
    env.refresh_flags(f)  # occlusion and revealed flags changed

    st["hold_count"] = np.where(env.task.success_condition(f), st["hold_count"] + 1, 0)
    success = st["hold_count"] >= cfg.success.hold_steps
    table = env.scene_spec.table_half_extent + 0.02
    off_table = ((f.obj_pos[..., 2] < LOST_BELOW) | (np.abs(f.obj_pos[..., :2]) > table).any(-1)).any(1)
    unstable = env._unstable | ~np.isfinite(env._qpos).all(1)
    bonus = cfg.reward.success_bonus + env.task.max_step_reward() * cfg.episode_length  # see tasks.py
    reward = cfg.reward.scale * (env.task.reward(f) + bonus * success)
    terminated = success | off_table | unstable
    time_outs = (st["step"] >= cfg.episode_length) & ~terminated
    done = terminated | time_outs
    st["ep_return"] += reward

    obs = env.obs_manager.compute(f)
    extras = {
        "time_outs": torch.from_numpy(time_outs),
        "terminated": torch.from_numpy(terminated),
        "success": torch.from_numpy(success),
        "attempt": torch.from_numpy(st["attempt"].astype(np.int64)),
        "perturbations": {k: torch.from_numpy(v.copy()) for k, v in perturbations.items()},
        "failure": {"object_lost": torch.from_numpy(off_table), "sim_unstable": torch.from_numpy(unstable)},
        "episode": {
            "return": torch.from_numpy(st["ep_return"].copy()),
            "length": torch.from_numpy(st["step"].astype(np.float64)),
            "success": torch.from_numpy(success.copy()),
            "attempts": torch.from_numpy(st["attempt"] + 1),
            "touched": torch.from_numpy(st["ever_touched"] > 0),
            "seed": torch.from_numpy(env.seeds.astype(np.int64)),
        },
    }
    if done.any():
        extras["final_obs"] = env._to_torch({k: v.copy() for k, v in obs.items()})
        ids = np.nonzero(done)[0]
        env.reset_envs(ids)
        fresh = env.obs_manager.compute(env._frame())
        for k in obs:
            obs[k][ids] = fresh[k][ids]
    else:
        extras["final_obs"] = env._to_torch(obs)
    return env._to_torch(obs), torch.from_numpy(reward.astype(np.float32)), torch.from_numpy(done), extras
