"""rsl-rl-lib 5.5.1's own OnPolicyRunner and logger on our Lift env, through envs/rsl_rl.py."""

import numpy as np
import pytest
import torch

pytest.importorskip("rsl_rl", reason="rsl-rl-lib is not installed (pip install -e '.[bench]')")

from common.evaluate import evaluate  # noqa: E402
from envs.rsl_rl import RslRlVecEnv, finished_episode_stats, runner_config, to_tensordict  # noqa: E402
from rl.ppo import PPOConfig  # noqa: E402

# Tiny: 16 envs, 50-step episodes, one episode per env per iteration; 30 iterations take ~7 s here.
N, LENGTH, ITERATIONS = 16, 50, 30


class Scalars:
    """Stands in for rsl_rl's log writer: keeps what its logger computes, writes no files."""

    def __init__(self):
        self.values: dict[str, list[float]] = {}

    def add_scalar(self, key, value, step):
        self.values.setdefault(key, []).append(float(value))


def lift(make, **overrides):
    return make("lift", num_envs=N, episode_length=LENGTH, num_threads=1, **overrides)


def mean_return(policy, env) -> float:
    with torch.no_grad():
        result = evaluate(env, lambda obs: policy(to_tensordict(obs)), lambda done: None, 2 * N, seed=123,
                          progress=False)
    return result["mean_reward"]


def test_rsl_rl_runner_learns_lift_and_logs_per_episode_means(make, tmp_path):
    from rsl_rl.runners import OnPolicyRunner

    torch.manual_seed(0)
    env = RslRlVecEnv(lift(make))
    runner = OnPolicyRunner(env, runner_config(PPOConfig(), hidden=(64, 64), num_steps_per_env=LENGTH),
                            log_dir=None, device="cpu")
    scalars = runner.logger.writer = Scalars()
    runner.logger.init_logging_writer = lambda: None  # learn() would reset the writer to None without a log_dir
    runner.logger.log_dir = str(tmp_path)  # where it saves model_0.pt once a writer is set
    eval_env = lift(make)
    before = mean_return(runner.get_inference_policy(), eval_env)
    runner.learn(ITERATIONS)
    after = mean_return(runner.get_inference_policy(), eval_env)
    # measured (seed 0): 0.059 -> 0.361; seed 1: 0.115 -> 0.238
    assert after > 2 * before, (before, after)
    logged = scalars.values
    # rsl_rl sums the rewards of each finished episode itself (Train/mean_reward, over its last 100
    # episodes); in iteration 0 that is the 16 first episodes, so the mean of our per-episode returns
    # must equal it: an adapter that gave the logger all-env tensors would mix in unfinished returns.
    assert logged["Episode/return"][0] == pytest.approx(logged["Train/mean_reward"][0], rel=1e-5)
    assert logged["Episode/length"][0] == pytest.approx(logged["Train/mean_episode_length"][0])
    assert {"Episode/success", "Episode/attempts", "Episode/touched"} <= logged.keys()
    assert "Episode/seed" not in logged


def test_finished_episode_stats_keep_only_the_envs_that_ended():
    done = torch.tensor([True, False, True, False])
    episode = {"return": torch.tensor([1.0, 9.0, 3.0, 9.0]), "success": torch.tensor([True, True, False, True]),
               "seed": torch.arange(4)}
    stats = finished_episode_stats(done, episode)
    assert stats.keys() == {"return", "success"}
    assert stats["return"].tolist() == [1.0, 3.0] and stats["success"].tolist() == [1.0, 0.0]
    assert finished_episode_stats(torch.zeros(4, dtype=torch.bool), episode) == {}


def test_wrapping_resets_every_env_into_the_scenes_reset_draws(make):
    wrapped = RslRlVecEnv(lift(make), seed=5)
    reference = lift(make)
    obs = reference.reset(seed=5)
    seeds = wrapped.env.seeds
    assert np.array_equal(seeds, reference.seeds) and len(set(seeds.tolist())) == N
    got = wrapped.get_observations()
    for group, values in obs.items():
        assert torch.equal(got[group], values), group
    # rsl_rl's init_at_random_ep_len assigns the whole buffer; it must reach the env
    wrapped.episode_length_buf = torch.full((N,), 7)
    assert wrapped.env.episode_length_buf.tolist() == [7] * N
    obs, reward, done, extras = wrapped.step(torch.zeros(N, wrapped.num_actions))
    assert obs.batch_size == torch.Size([N]) and done.dtype == torch.long and set(extras) <= {"time_outs", "episode"}
