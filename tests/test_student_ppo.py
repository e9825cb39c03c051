"""PPO on a recurrent student with a privileged critic (rl/student_actor_critic.py, rl/ppo.py's sequence path):
an update's first minibatch recomputes the rollout exactly (ratio 1, KL 0), the critic warm-up leaves the
student bitwise as it was, a few iterations on a real env keep actions raw and the log-std free, and an
update with demonstrated sequences adds the imitation term without disturbing the rollout's recomputation."""

import math

import numpy as np
import pytest
import torch

from rl.demo_sequences import DemoSequences
from rl.networks import split_parameters
from rl.ppo import PPO, PPOConfig, gaussian_kl
from rl.recurrent_storage import RecurrentRolloutStorage, RolloutCarry, collect_rollout, memory_env_dims
from rl.student.model import build_student
from rl.student_actor_critic import StudentActorCritic

SMALL = {"d_model": 32, "n_heads": 2, "n_layers": 2, "n_memory": 3, "block": 4, "init": "default",
         "head_hidden": [32], "init_std": 1.0}
STUDENTS = {
    "transformer": ("transformer", SMALL),
    "rnn": ("rnn", {"hidden": [32], "rnn_hidden": 32, "rnn_layers": 2, "head_hidden": [32], "init_std": 1.0}),
}
T, L, N, EPISODE = 24, 6, 4, 10  # episodes of 10 steps end inside sequences of 6
CFG = PPOConfig(num_epochs=2, num_minibatches=2, learning_rate=1e-3)


def env_and_student(make, kind: str, cfg: dict):
    """A tiny env with desynchronised resets and a fresh student of ``kind`` on it: (env, first obs, student)."""
    env = make("pick_loose", num_envs=N, episode_length=EPISODE, num_threads=1)
    obs = env.reset(seed=0)
    env.episode_length_buf = torch.tensor([0, 3, 7, 9])  # desynchronised resets
    torch.manual_seed(0)
    student = build_student(kind, env.obs_spec, {**cfg, "action_dim": env.num_actions})
    student.fit_normalizer(obs["policy"] * 1.5 + 0.1)  # a normaliser other than the identity
    return env, obs, student


def setup(make, name: str):
    env, obs, student = env_and_student(make, *STUDENTS[name])
    policy = StudentActorCritic(student, env.obs_spec.dim("privileged"), critic_hidden=[32, 32])
    policy.update_normalizers(obs)
    obs_dims = {"policy": env.obs_spec.dim("policy"), "privileged": env.obs_spec.dim("privileged")}
    storage = RecurrentRolloutStorage(T, N, obs_dims, env.num_actions, L, memory_env_dims(student))
    return env, policy, storage, RolloutCarry(obs)


def rollout(env, policy, storage, carry, gen):
    storage.clear()
    carry = collect_rollout(env, policy, storage, carry, gen, value_fn=policy.value, gamma=CFG.gamma)
    with torch.no_grad():
        storage.compute_returns(policy.value(carry.obs), CFG.gamma, CFG.lam)
    return carry


def test_the_actor_is_the_student_and_the_critic_apart(make):
    env, policy, storage, carry = setup(make, "transformer")
    actor, critic = split_parameters(policy)
    assert {id(p) for p in actor} == {id(p) for p in policy.student.parameters()}
    assert {id(p) for p in critic} == {id(p) for p in policy.critic.parameters()}
    assert policy.is_recurrent and policy.log_std is policy.student.head.log_std
    student_norm = {k: v.clone() for k, v in policy.student.norm.state_dict().items()}
    policy.update_normalizers({"privileged": carry.obs["privileged"] * 3 + 1, "policy": carry.obs["policy"] * 3})
    assert all(torch.equal(v, policy.student.norm.state_dict()[k]) for k, v in student_norm.items())
    assert policy.critic_norm.count == 2 * N  # the critic's own statistics moved


@pytest.mark.parametrize("name", list(STUDENTS))
def test_first_minibatch_of_an_update_has_ratio_one(make, name):
    env, policy, storage, carry = setup(make, name)
    gen = torch.Generator().manual_seed(1)
    carry = rollout(env, policy, storage, carry, gen)
    assert storage.starts[1:].any()  # episodes start inside the rollout: the memory must be reset there
    batches, calls = [], []
    sequences, evaluate = storage.sequence_minibatches, policy.evaluate

    def spy_batches(*args, **kwargs):
        for b in sequences(*args, **kwargs):
            batches.append(b)
            yield b

    def spy_evaluate(obs, memory0=None, starts=None):
        out = evaluate(obs, memory0, starts)
        calls.append((out[0].mean.detach(), out[0].stddev.detach(), out[1].detach(), memory0, starts))
        return out

    storage.sequence_minibatches, policy.evaluate = spy_batches, spy_evaluate
    ppo = PPO(policy, CFG, generator=torch.Generator().manual_seed(2))
    stats = ppo.update(storage)
    assert len(calls) == len(batches) == CFG.num_epochs * CFG.num_minibatches
    first = batches[0]
    mean, std, values, memory0, starts = calls[0]
    assert memory0 is first["memory0"] and starts is first["starts"]  # the stored memory and starts passed on
    assert mean.shape == first["actions"].shape and values.shape == first["returns"].shape  # (B, L, A), (B, L)
    log_probs = torch.distributions.Normal(mean, std).log_prob(first["actions"]).sum(-1)
    worst = (log_probs - first["log_probs"]).abs().max().item()
    kl = gaussian_kl(first["means"], first["stds"], mean, std).mean().item()
    assert torch.allclose(values, first["values"], atol=1e-5)  # the critic as it was in the rollout
    print(f"{name}: first minibatch max |log-prob - old| {worst:.2e}, KL {kl:.2e}")
    assert worst < 1e-5 and abs(kl) < 1e-8
    # the control: without the memory and the starts the sequences are not the rollout's
    with torch.no_grad():
        dist, _ = evaluate(first["obs"])
    assert (dist.log_prob(first["actions"]).sum(-1) - first["log_probs"]).abs().max() > 1e-3
    # later minibatches see moved weights
    later = torch.distributions.Normal(calls[-1][0], calls[-1][1]).log_prob(batches[-1]["actions"]).sum(-1)
    assert (later - batches[-1]["log_probs"]).abs().max() > 1e-5
    assert all(math.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("name", list(STUDENTS))
def test_critic_warm_up_leaves_the_student_bitwise_unchanged(make, name):
    env, policy, storage, carry = setup(make, name)
    rollout(env, policy, storage, carry, torch.Generator().manual_seed(1))
    student = {k: v.clone() for k, v in policy.student.state_dict().items()}
    critic = {k: v.clone() for k, v in policy.critic.state_dict().items()}
    ppo = PPO(policy, CFG, generator=torch.Generator().manual_seed(2))
    lr = ppo.learning_rate
    stats = ppo.update(storage, update_actor=False)
    assert all(torch.equal(v, policy.student.state_dict()[k]) for k, v in student.items())
    assert any(not torch.equal(v, policy.critic.state_dict()[k]) for k, v in critic.items())
    assert ppo.learning_rate == lr and ppo.actor_updates == 0  # the KL schedule waits for the actor
    assert stats["value_loss"] > 0
    ppo.update(storage)  # and the actor update moves the student
    assert any(not torch.equal(v, policy.student.state_dict()[k]) for k, v in student.items())


def test_a_few_ppo_iterations_keep_actions_raw_and_the_log_std_free(make):
    env, policy, storage, carry = setup(make, "transformer")
    gen = torch.Generator().manual_seed(1)
    ppo = PPO(policy, CFG, generator=torch.Generator().manual_seed(2))
    log_std0 = policy.log_std.detach().clone()
    for it in range(3):
        if it == 2:  # far outside any sensible range: nothing may clamp it
            with torch.no_grad():
                policy.log_std[0], policy.log_std[1] = 3.0, -6.0
        before = policy.log_std.detach().clone()
        carry = rollout(env, policy, storage, carry, gen)
        assert torch.equal(storage.stds, before.exp().expand_as(storage.stds))  # the std stored as it is
        assert (storage.actions.abs() > 1).any()  # raw actions: nothing clipped them
        stats = ppo.update(storage)
        policy.update_normalizers({k: v.reshape(-1, v.shape[-1]) for k, v in storage.obs.items()})
        assert all(math.isfinite(v) for v in stats.values()), stats
        assert "grad_l2/student.head.log_std" in stats  # the log-std is trained as the actor's
    assert not torch.equal(policy.log_std.detach(), log_std0)
    assert policy.log_std[0] > 2.5 and policy.log_std[1] < -5.5  # moved by PPO, not clamped back


def demo_sequences(env, seq_len=4, burn_in=3):
    """Random demonstrated episodes of the student's group with raw actions outside the env's bounds."""
    g = torch.Generator().manual_seed(4)
    steps = 30
    arrays = {"obs": torch.randn(steps, env.obs_spec.dim("policy"), generator=g).numpy(),
              "action": (3.0 * torch.randn(steps, env.num_actions, generator=g)).numpy(),
              "ends": np.array([7, 19, 30])}
    return DemoSequences(arrays, "policy", seq_len=seq_len, burn_in=burn_in)


@pytest.mark.parametrize("name", list(STUDENTS))
def test_an_update_with_demonstrated_sequences_imitates_and_keeps_the_first_ratio_one(make, name):
    env, policy, storage, carry = setup(make, name)
    rollout(env, policy, storage, carry, torch.Generator().manual_seed(1))
    cfg = PPOConfig(bc_coef=0.5, num_epochs=2, num_minibatches=2)
    evaluate_actor = policy.evaluate_actor
    rollout_calls, demo_calls = [], []

    def spy_evaluate(obs, memory0=None, starts=None):
        dist = evaluate_actor(obs, memory0, starts)  # evaluate's own actor pass, not counted as a demo pass
        rollout_calls.append((dist.mean.detach(), dist.stddev.detach()))
        return dist, policy.value(obs)

    def spy_actor(obs, memory0=None, starts=None):
        demo_calls.append((obs["policy"].shape, memory0))
        return evaluate_actor(obs, memory0, starts)

    policy.evaluate, policy.evaluate_actor = spy_evaluate, spy_actor
    ppo = PPO(policy, cfg, generator=torch.Generator().manual_seed(2))
    ppo.set_demonstration_sequences(demo_sequences(env))
    first = next(storage.sequence_minibatches(cfg.num_minibatches, cfg.num_epochs, torch.Generator().manual_seed(2)))
    stats = ppo.update(storage)
    assert stats["imitation_loss"] > 0 and all(math.isfinite(v) for v in stats.values())
    # one demonstrated pass per minibatch, as many windows as the minibatch has sequences: seq_len 4 steps
    # each from the memory their 3 burn-in steps built (none for the MLP), without gradient
    sequences = storage.J * storage.N // cfg.num_minibatches
    assert len(demo_calls) == cfg.num_epochs * cfg.num_minibatches
    assert all(shape[:2] == (sequences, 4) for shape, _ in demo_calls)
    memories = [m for _, m in demo_calls]
    assert all(m is None for m in memories) if name == "mlp" else all(m is not None for m in memories)
    leaves = [t for m in memories if m is not None for t in (m if isinstance(m, tuple) else vars(m).values())]
    assert not any(t.requires_grad for t in leaves if torch.is_tensor(t))
    mean, std = rollout_calls[0]  # the first minibatch, before any step: the rollout's distributions
    log_probs = torch.distributions.Normal(mean, std).log_prob(first["actions"]).sum(-1)
    assert (log_probs - first["log_probs"]).abs().max() < 1e-5


def test_single_demonstrated_pairs_for_a_recurrent_student_are_refused(make):
    env, policy, storage, carry = setup(make, "rnn")
    rollout(env, policy, storage, carry, torch.Generator().manual_seed(1))
    ppo = PPO(policy, PPOConfig(bc_coef=0.1, num_epochs=1, num_minibatches=1))
    ppo.set_demonstrations({"policy": carry.obs["policy"]}, torch.zeros(N, env.num_actions))
    with pytest.raises(ValueError, match="set_demonstration_sequences"):
        ppo.update(storage)


def test_the_student_acts_as_deployed_in_train_mode_so_its_previous_action_dropout_does_not_break_ratio_one(make):
    env = make("pick_loose", num_envs=N, episode_length=EPISODE, num_threads=1)
    obs = env.reset(seed=0)
    torch.manual_seed(0)
    student = build_student("transformer", env.obs_spec, {**SMALL, "action_dim": env.num_actions,
                                                          "prev_action": "dropout", "prev_action_p": 0.5})
    policy = StudentActorCritic(student, env.obs_spec.dim("privileged"), critic_hidden=[32])
    inputs = {**obs, "prev_action": torch.randn(N, env.num_actions)}

    def two_means():
        return [policy.act(inputs)[0].mean for _ in range(2)]

    policy.train()
    assert policy.training and not policy.student.training
    a, b = two_means()
    assert torch.equal(a, b)  # no dropout draw: a rollout and its recomputation see the same network
    student.train()  # the control: in its own train mode the student drops the previous action at random
    torch.manual_seed(1)
    draws = [policy.act(inputs)[0].mean for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
