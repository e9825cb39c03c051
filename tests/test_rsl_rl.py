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


def test_one_ppo_update_on_the_same_rollout_moves_the_weights_as_rsl_rls(make, monkeypatch):
    """Our PPO update against rsl_rl's PPO.update, on one rollout of ours copied into its storage, from the
    same initial weights and in the same minibatch order: returns, normalised advantages, the adaptive
    learning rate and the weights after the update must agree. What is left to differ is pinned apart:
    the observation normaliser's form (off here on both sides: ours divides by sqrt(var + eps), theirs by
    std + eps) and the std's parameterisation (ours a log-std, theirs the std itself: equal gradients at
    std 1, so one update moves both stds alike). Measured: weights 2.9e-6 apart after moving by up to
    1.3e-2, stds 2.2e-5 apart, returns equal to float rounding."""
    from rsl_rl.runners import OnPolicyRunner as RslRunner

    from rl.networks import MLPActorCritic, MLPPolicyConfig
    from rl.runner import OnPolicyRunner, RunnerConfig

    T, hidden = 8, (64, 64)
    env = lift(make)
    dim = env.obs_spec.dim("privileged")
    torch.manual_seed(0)
    ours = MLPActorCritic(MLPPolicyConfig(actor_dim=dim, critic_dim=dim, actor_hidden=list(hidden),
                                          critic_hidden=list(hidden), normalize_obs=False))
    runner = OnPolicyRunner(env, ours, PPOConfig(), RunnerConfig(num_steps_per_env=T, random_initial_lengths=False))
    cfg = runner_config(PPOConfig(), hidden=hidden, num_steps_per_env=T)
    cfg["actor"]["obs_normalization"] = cfg["critic"]["obs_normalization"] = False
    torch.manual_seed(0)
    alg = RslRunner(RslRlVecEnv(lift(make)), cfg, log_dir=None, device="cpu").alg
    pairs = list(zip(ours.actor.parameters(), alg.actor.mlp.parameters())) + \
        list(zip(ours.critic.parameters(), alg.critic.mlp.parameters()))
    assert all(torch.equal(a, b) for a, b in pairs)  # same construction order, same draws

    runner.obs = env.reset(seed=0)
    runner.collect_rollout()
    ours_st, st = runner.storage, alg.storage
    st.observations["privileged"].copy_(ours_st.obs["privileged"])
    st.actions.copy_(ours_st.actions)
    st.rewards.copy_(ours_st.rewards.unsqueeze(-1))  # time-outs already bootstrapped (ours: V(final_obs))
    st.dones.copy_(ours_st.dones.unsqueeze(-1).byte())
    st.values.copy_(ours_st.values.unsqueeze(-1))
    st.actions_log_prob.copy_(ours_st.log_probs.unsqueeze(-1))
    st.distribution_params = (ours_st.means.clone(), ours_st.stds.clone())
    st.step = T
    alg.compute_returns(to_tensordict(runner.obs))
    assert torch.allclose(st.returns.squeeze(-1), ours_st.returns, atol=1e-6)
    advantages = ours_st.advantages
    assert torch.allclose(st.advantages.squeeze(-1), (advantages - advantages.mean()) / (advantages.std() + 1e-8),
                          atol=1e-5)

    # rsl_rl draws one permutation for all epochs, ours one per epoch: give both the same one
    order = torch.randperm(T * N, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(torch, "randperm", lambda *args, **kwargs: order.clone())
    before = [a.detach().clone() for a, _ in pairs]
    runner.ppo.update(ours_st)
    alg.update()
    assert runner.ppo.learning_rate == pytest.approx(alg.learning_rate, rel=1e-6)
    assert runner.ppo.learning_rate < PPOConfig().learning_rate  # the schedule acted: a real comparison
    apart = max((a - b).abs().max().item() for a, b in pairs)
    moved = max((a.detach() - a0).abs().max().item() for (a, _), a0 in zip(pairs, before))
    assert apart < 5e-5 and moved > 100 * apart, (apart, moved)
    std_apart = (ours.log_std.exp() - alg.actor.distribution.std_param).abs().max().item()
    assert std_apart < 1e-4, std_apart
