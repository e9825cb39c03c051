"""Our tasks in Isaac Lab 3.0, kit-less on Newton, for real on the CPU (``make test-isaaclab``).

Skipped where isaaclab is not importable (the core venv: ``make test``). Isaac Lab allows one
simulation per process, so each module builds one env and its tests share it in order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("isaaclab", reason="Isaac Lab is an optional extra: make isaaclab, then make test-isaaclab")

from envs import make_env  # noqa: E402
from envs.base import ConfigError  # noqa: E402
from envs.scripted import ScriptedExpert  # noqa: E402
from tests.conftest import env_config  # noqa: E402

N = 4


@pytest.fixture(scope="module")
def env():
    e = make_env({**env_config("lift", num_envs=N, episode_length=40), "simulator": "isaaclab"})
    yield e
    e.close()


def _rollout(env, actions):
    out = []
    for a in actions:
        obs, reward, done, extras = env.step(a)
        out.append(np.concatenate([obs["privileged"].numpy(), reward[:, None].numpy()], 1))
    return np.stack(out)


def test_contract_shapes_and_the_mujoco_obs_spec(env):
    mujoco_env = make_env(env_config("lift", num_envs=N))
    assert env.obs_spec.to_dict() == mujoco_env.obs_spec.to_dict()  # one task definition: the same tokens
    obs = env.get_observations()
    for group in ("policy", "privileged"):
        assert obs[group].shape == (N, env.obs_spec.dim(group)) and obs[group].dtype == torch.float32
    obs, reward, done, extras = env.step(torch.zeros(N, 5))
    assert reward.shape == (N,) and done.dtype == torch.bool
    for key in ("time_outs", "terminated", "success", "attempt", "final_obs", "episode", "perturbations"):
        assert key in extras
    # The episode starts where the MuJoCo task's would: the same seeds draw the same scene
    assert np.allclose(env._qpos[:, :3], mujoco_env._qpos[:, :3], atol=0.01)
    assert np.allclose(env._qpos[:, env._qadr[0]: env._qadr[0] + 2], mujoco_env._qpos[:, 6:8], atol=0.005)


def test_state_round_trip_continues_the_same(env):
    g = torch.Generator().manual_seed(0)
    actions = [torch.randn(N, 5, generator=g) for _ in range(6)]
    _rollout(env, actions[:2])
    state = env.get_state()
    first = _rollout(env, actions[2:])
    env.set_state(np.arange(N), state)
    assert torch.allclose(env.get_state(), state, atol=1e-5)
    again = _rollout(env, actions[2:])
    # Newton's solver warm start is not in the state: equal to solver tolerance, not bitwise
    assert np.abs(first - again).max() < 1e-3


def test_raw_actions_are_clipped_only_at_the_env_boundary(env):
    state = env.get_state()
    big = torch.tensor([[7.0, -9.0, 3.0, 0.0, 4.0]]).repeat(N, 1)  # raw, far outside [-1, 1]
    a = _rollout(env, [big, big])
    env.set_state(np.arange(N), state)
    b = _rollout(env, [big.clamp(-1, 1), big.clamp(-1, 1)])
    assert np.abs(a - b).max() < 1e-3
    moved = env.get_state()[:, :3] - state[:, :3]
    assert (moved[:, 0] > 0.01).all()  # it did act: +x by about 2 x 2 cm


def test_time_out_auto_reset_and_final_obs(env):
    env.reset()
    for _ in range(40):
        obs, reward, done, extras = env.step(torch.zeros(N, 5))  # hold still: no success, a time-out
    assert done.all() and extras["time_outs"].all() and not extras["terminated"].any()
    assert (env.episode_length_buf == 0).all()
    final = extras["final_obs"]["privileged"]
    assert not torch.allclose(final, obs["privileged"])  # the returned rows are the next episode's first


def test_hidden_mass_and_friction_reach_the_simulator(env):
    env.reset()
    from envs.isaaclab.task_env import _t

    mass = _t(env._objects[0].data.body_mass).cpu().numpy().reshape(N)
    assert np.allclose(mass, env.st["mass"][:, 0], rtol=1e-5)
    assert len(set(np.round(mass, 4))) == N  # drawn per env
    friction = env._shape_friction(env._objects[0]).cpu().numpy()
    assert np.allclose(friction[:, 0], env.st["friction"][:, 0], rtol=1e-5)
    assert (env._shape_friction(env._gripper).cpu().numpy() == 0).all()  # the cube's friction wins


def test_scripted_expert_lifts_in_isaac_lab(env):
    env.reset()
    expert = ScriptedExpert.for_env(env)
    obs, successes, ended = env.get_observations(), 0, 0
    for _ in range(60):
        obs, reward, done, extras = env.step(expert.act(obs))
        expert.reset(done)
        successes += int(extras["episode"]["success"][done].sum())
        ended += int(done.sum())
    assert ended >= N and successes / ended >= 0.9  # MuJoCo: 64/64 on these tasks' seeds


def test_one_cube_size_per_isaac_lab_task():
    with pytest.raises(ConfigError, match="half_size"):
        make_env({**env_config("lift", num_envs=1, cube={"half_size": [0.015, 0.025]}), "simulator": "isaaclab"})


def test_a_second_isaac_lab_env_runs_in_a_child_process_and_plays_the_same(env):
    from envs.subprocess_env import SubprocessEnv

    other = make_env({**env_config("lift", num_envs=N, episode_length=40), "simulator": "isaaclab"})
    try:
        assert isinstance(other, SubprocessEnv)  # one simulation per process: the module's env is open
        assert other.obs_spec.to_dict() == env.obs_spec.to_dict() and other.num_envs == N
        a, b = env.reset(seed=5), other.reset(seed=5)
        assert torch.allclose(a["privileged"], b["privileged"])
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            action = torch.randn(N, 5, generator=g)
            (oa, ra, _, _), (ob, rb, _, _) = env.step(action), other.step(action)
        assert torch.allclose(oa["privileged"], ob["privileged"], atol=1e-4) and torch.allclose(ra, rb, atol=1e-5)
    finally:
        other.close()
