"""Group-relative advantages (rl/group_advantage.py, RunnerConfig.advantage="group"): zero mean and unit std per
group, bad group sizes refused, the G envs of a group starting in exactly one state, the steps after an env's first
done masked out of the update, and short group-mode runs (recurrent student and MLP) with no critic at work."""

import copy
import math

import pytest
import torch

from envs.base import ConfigError
from rl.group_advantage import first_episode_mask, group_advantages, group_targets
from rl.networks import MLPActorCritic, MLPPolicyConfig
from rl.ppo import PPO, PPOConfig, valid_mean
from rl.runner import OnPolicyRunner, RunnerConfig
from rl.student.model import build_student
from rl.student_actor_critic import StudentActorCritic

SMALL = {"d_model": 32, "n_heads": 2, "n_layers": 2, "n_memory": 3, "block": 4, "init": "default",
         "head_hidden": [32], "init_std": 1.0, "prev_action": "on"}
N, G, EPISODE, T, L = 4, 2, 10, 12, 4  # each env's first episode ends by step 10; steps 10, 11 (at least) are masked
PPO_CFG = PPOConfig(num_epochs=2, num_minibatches=2, learning_rate=1e-3)


def new_runner(make, logger=None, group_start=None, **cfg):
    env = make("pick_loose", num_envs=N, episode_length=EPISODE, num_threads=1)
    torch.manual_seed(0)
    student = build_student("transformer", env.obs_spec, {**SMALL, "action_dim": env.num_actions})
    student.fit_normalizer(env.reset(seed=0)["policy"])
    policy = StudentActorCritic(student, env.obs_spec.dim("privileged"), critic_hidden=[32, 32])
    run_cfg = RunnerConfig(**{"num_steps_per_env": T, "seq_len": L, "num_iterations": 2, "seed": 3,
                              "advantage": "group", "group_size": G, **cfg})
    return OnPolicyRunner(env, policy, PPO_CFG, run_cfg, logger=logger, group_start=group_start)


def _own_columns(env) -> list[int]:
    """The state entries an env keeps of its own when it borrows a state (keep_episode_counter)."""
    base = env.mj_state_size + 4
    return [base + env._SCALARS.index(k) for k in ("episode_index", "base_seed_lo", "base_seed_hi")]


def _shared(env, states: torch.Tensor) -> torch.Tensor:
    keep = [c for c in range(states.shape[1]) if c not in _own_columns(env)]
    return states[:, keep]


def test_group_advantages_have_zero_mean_and_unit_std_per_group():
    returns = torch.randn(12, generator=torch.Generator().manual_seed(0)) * 5 + torch.arange(12.0)  # (N,)
    adv = group_advantages(returns, 4).reshape(3, 4)  # groups of consecutive envs
    assert torch.allclose(adv.mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(adv.std(1, correction=0), torch.ones(3), atol=1e-5)
    # consecutive blocks, not strided: env 0 and 1 are one group
    assert torch.allclose(group_advantages(torch.tensor([0.0, 2.0, 10.0, 10.0]), 2),
                          torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-5)  # equal returns teach nothing


@pytest.mark.parametrize("size", [0, 1, 3])
def test_an_invalid_group_size_is_refused(size):
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(8), size)


def test_bad_group_configs_are_refused_with_the_fix(make):
    with pytest.raises(ConfigError, match="group_size=3 with 4 envs"):
        new_runner(make, group_size=3)
    with pytest.raises(ConfigError, match="num_steps_per_env=8 is shorter than an episode"):
        new_runner(make, num_steps_per_env=8)
    with pytest.raises(ConfigError, match="critic_warmup_iterations=0"):
        new_runner(make, critic_warmup_iterations=1)
    with pytest.raises(ConfigError, match="choose gae or group"):
        new_runner(make, advantage="grpo")


def test_steps_after_the_first_done_are_masked_and_returns_are_episode_sums():
    dones = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 0]], dtype=torch.bool)  # (T=4, N=2)
    rewards = torch.tensor([[1.0, 0.5], [2.0, 0.5], [4.0, 0.5], [8.0, 9.0]])
    valid, returns, adv = group_targets(rewards, dones, 2)
    assert torch.equal(valid, first_episode_mask(dones))
    assert torch.equal(valid, torch.tensor([[1, 1], [1, 1], [0, 1], [0, 0]], dtype=torch.bool))
    assert torch.equal(returns[0], torch.tensor([3.0, 1.5]))  # undiscounted, later episodes left out
    assert adv[0, 0] > 0 > adv[0, 1] and torch.equal(adv[~valid], torch.zeros(3))
    with pytest.raises(RuntimeError, match="did not finish"):
        group_targets(rewards, torch.zeros(4, 2, dtype=torch.bool), 2)
    # the update's means: over the valid steps only, and 0 (not NaN) for a minibatch with none
    assert valid_mean(rewards, valid) == (1 + 2 + 0.5 * 3) / 5
    assert valid_mean(rewards, torch.zeros(4, 2, dtype=torch.bool)) == 0


def test_the_envs_of_a_group_start_in_exactly_one_state(make):
    runner = new_runner(make)
    env, starts = runner.env, []
    step = env.step

    def spy(actions):  # the state every rollout acts from first
        if runner.storage.step == 0:
            starts.append(env.get_state())
        return step(actions)

    env.step = spy
    runner.learn(progress=False)
    assert len(starts) == 2
    for states in starts:
        shared = _shared(env, states).reshape(N // G, G, -1)  # (groups, G, S')
        assert torch.equal(shared[:, 1:], shared[:, :1].expand(-1, G - 1, -1))  # exactly the leader's state
        assert not torch.equal(shared[0, 0], shared[1, 0])  # each group its own fresh episode
    assert not torch.equal(_shared(env, starts[0]), _shared(env, starts[1]))  # a new start each rollout
    # the same start, different action noise: the group's episodes differ
    assert runner.episodes[0][0] != runner.episodes[1][0] or runner.episodes[2][0] != runner.episodes[3][0]
    assert len(runner.episodes) == 2 * N  # only each env's first episode per rollout is recorded


def test_group_start_sets_the_state_the_whole_group_copies(make):
    def group_start(env, leader_ids):  # e.g. demo states: here every group starts where group 0 does
        assert leader_ids.tolist() == list(range(0, N, G))
        env.set_state(leader_ids[1:], env.get_state(leader_ids[:1]).repeat(len(leader_ids) - 1, 1),
                      keep_episode_counter=True)

    runner = new_runner(make, group_start=group_start)
    runner.collect_rollout()
    for group in ("privileged", "policy"):  # the first obs of every env, the policy's noise included
        first = runner.storage.obs[group][0]  # (N, D)
        assert torch.equal(first, first[:1].expand(N, -1))
    assert bool(runner.storage.starts[0].all())  # the memory starts fresh with the episode


def _update(runner, storage, policy):
    ppo = PPO(policy, PPO_CFG, generator=torch.Generator().manual_seed(0))
    stats = ppo.update(storage, use_critic=False)
    return stats, {k: v.clone() for k, v in policy.state_dict().items()}


def test_masked_steps_get_no_gradient(make):
    runner = new_runner(make)
    runner.collect_rollout()
    storage, policy = runner.storage, runner.policy
    valid = storage.valid.clone()
    assert 0 < int((~valid).sum()) and bool(valid[0].all())  # something masked, every env's first step kept
    stats, reference = _update(runner, copy.deepcopy(storage), copy.deepcopy(policy))

    changed = copy.deepcopy(storage)  # scramble everything the loss reads at the masked steps
    changed.actions[~valid] = 5.0
    changed.advantages[~valid] = 1e3
    changed.log_probs[~valid] = -50.0
    changed.means[~valid] = -3.0
    changed_stats, weights = _update(runner, changed, copy.deepcopy(policy))
    assert all(torch.equal(v, weights[k]) for k, v in reference.items())
    assert changed_stats["policy_loss"] == stats["policy_loss"] and changed_stats["kl"] == stats["kl"]

    control = copy.deepcopy(storage)  # the same change at one valid step does move the weights
    control.advantages[0, 0] = 1e3
    _, moved = _update(runner, control, copy.deepcopy(policy))
    assert any(not torch.equal(v, moved[k]) for k, v in reference.items())


class Recorder:
    def __init__(self):
        self.rows = []

    def log(self, m, step):
        self.rows.append(m)


def test_a_group_run_of_the_student_learns_without_the_critic(make):
    log = Recorder()
    runner = new_runner(make, logger=log)
    critic = {k: v.clone() for k, v in runner.policy.critic.state_dict().items()}
    student = {k: v.clone() for k, v in runner.policy.student.state_dict().items()}
    runner.learn(progress=False)
    assert len(log.rows) == 2
    for row in log.rows:
        assert math.isfinite(row["policy_loss"]) and math.isfinite(row["kl"]) and row["value_loss"] == 0.0
        assert 0 < row["valid_fraction"] < 1 and math.isnan(row["explained_variance"])
        assert math.isfinite(row["group_return_std"])
    assert all(torch.equal(v, runner.policy.critic.state_dict()[k]) for k, v in critic.items())  # never trained
    assert any(not torch.equal(v, runner.policy.student.state_dict()[k]) for k, v in student.items())


def test_a_group_run_of_an_mlp_policy_masks_and_skips_the_critic(make):
    env = make("pick_loose", num_envs=N, episode_length=EPISODE, num_threads=1)
    torch.manual_seed(0)
    dim = env.obs_spec.dim("privileged")
    policy = MLPActorCritic(MLPPolicyConfig(actor_dim=dim, critic_dim=dim, action_dim=env.num_actions,
                                            actor_hidden=[32], critic_hidden=[32]))
    critic = {k: v.clone() for k, v in policy.critic.state_dict().items()}
    runner = OnPolicyRunner(env, policy, PPO_CFG, RunnerConfig(num_steps_per_env=T, num_iterations=2, seed=3,
                                                               advantage="group", group_size=G))
    log = Recorder()
    runner.logger = log
    runner.learn(progress=False)
    assert all(r["value_loss"] == 0.0 and math.isfinite(r["policy_loss"]) and r["valid_fraction"] < 1
               for r in log.rows)
    assert all(torch.equal(v, policy.critic.state_dict()[k]) for k, v in critic.items())
    assert len(runner.episodes) == 2 * N
