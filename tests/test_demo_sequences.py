"""Demonstrated windows for a recurrent student's imitation term (rl/demo_sequences.py, rl/ppo.py): each window
is the arrays at the right offsets with its burn-in, starts, valid steps and zero padding; a seed fixes the batch;
the term's gradient pulls the student's mean to the demonstrated raw actions, on valid steps only."""

import numpy as np
import pytest
import torch

from envs.base import ConfigError
from rl.demo_sequences import DemoSequences
from rl.networks import MLPActorCritic, MLPPolicyConfig
from rl.ppo import PPO, PPOConfig
from rl.student.model import build_student
from rl.student_actor_critic import StudentActorCritic

ENDS = [5, 12, 30, 31]  # one episode of a single step, one longer than the window
B, L = 4, 3


def synthetic(ends):
    """obs = (episode + 1, step + 1): zero only in the padding; action = (global step, -global step)."""
    ends = np.asarray(ends)
    T = int(ends[-1])
    ep = np.searchsorted(ends, np.arange(T), side="right")
    t = np.arange(T) - np.concatenate([[0], ends[:-1]])[ep]
    obs = np.stack([ep + 1, t + 1], 1).astype(np.float32)
    action = np.stack([np.arange(T), -np.arange(T)], 1).astype(np.float32)
    return {"obs": obs, "action": action, "perturbed": t % 5 == 3, "ends": ends}


def expected_window(a, e, s):
    """The window of episode e whose last L steps start at step s, built step by step from the arrays."""
    begin, end = ([0, *a["ends"][:-1]])[e], a["ends"][e]
    n, D, A = B + L, a["obs"].shape[1], a["action"].shape[1]
    obs, act, prev = np.zeros((n, D), np.float32), np.zeros((n, A), np.float32), np.zeros((n, A), np.float32)
    starts, valid = np.zeros(n, bool), np.zeros(n, bool)
    for k in range(n):
        t = begin + s - B + k
        if begin <= t < end:
            obs[k], act[k] = a["obs"][t], a["action"][t]
            prev[k] = a["action"][t - 1] if t > begin else 0.0
            starts[k] = not obs[:k].any()  # the first real step (the padding before it is zero)
            valid[k] = k >= B
    return obs, act, prev, starts, valid


def test_windows_are_the_arrays_at_their_offsets_with_burn_in_starts_valid_and_zero_padding():
    a = synthetic(ENDS)
    seqs = DemoSequences(a, "policy", seq_len=L, burn_in=B)
    w = seqs.sample(2000, torch.Generator().manual_seed(0))
    assert w["obs"]["policy"].shape == (2000, B + L, 2) and w["obs"]["policy"].dtype == torch.float32
    assert w["actions"].shape == w["obs"]["prev_action"].shape == (2000, B + L, 2)
    assert w["starts"].dtype == w["valid"].dtype == torch.bool and w["starts"].shape == (2000, B + L)
    picked = set()
    episodes = np.zeros(len(ENDS), int)
    for i in range(2000):
        e, s = int(w["obs"]["policy"][i, B, 0]) - 1, int(w["obs"]["policy"][i, B, 1]) - 1  # always a real step
        picked.add((e, s))
        episodes[e] += 1
        obs, act, prev, starts, valid = expected_window(a, e, s)
        assert np.array_equal(w["obs"]["policy"][i].numpy(), obs), (e, s)
        assert np.array_equal(w["actions"][i].numpy(), act), (e, s)
        assert np.array_equal(w["obs"]["prev_action"][i].numpy(), prev), (e, s)
        assert np.array_equal(w["starts"][i].numpy(), starts), (e, s)
        assert np.array_equal(w["valid"][i].numpy(), valid), (e, s)
        assert w["starts"][i].sum() == 1  # one memory reset: at the episode start or a mid-episode burn-in
    assert picked == {(e, s) for e in range(len(ENDS)) for s in range(np.diff([0, *ENDS])[e])}  # every step
    # episode first, then step: the one-step episode is a quarter of the windows, not 1/31 of them
    assert (np.abs(episodes / 2000 - 0.25) < 0.05).all(), episodes
    # the spec's cases all occur: left padding, a burn-in from mid-episode, right padding
    assert (~w["valid"][:, B:]).any() and w["starts"][:, 1:B + 1].any()
    assert (w["starts"][:, 0] & (w["obs"]["policy"][:, 0, 1] > 1)).any()


def test_mask_perturbed_leaves_the_perturbed_steps_out_of_valid():
    a = synthetic(ENDS)
    plain = DemoSequences(a, "policy", L, B).sample(500, torch.Generator().manual_seed(3))
    masked = DemoSequences(a, "policy", L, B, mask_perturbed=True).sample(500, torch.Generator().manual_seed(3))
    perturbed = (masked["obs"]["policy"][..., 1] - 1) % 5 == 3  # step 3 and 8 of each episode
    assert torch.equal(masked["valid"], plain["valid"] & ~perturbed) and (plain["valid"] & perturbed).any()


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    seqs = DemoSequences(synthetic(ENDS), "policy", L, B)
    one, two = (seqs.sample(16, torch.Generator().manual_seed(7)) for _ in range(2))
    other = seqs.sample(16, torch.Generator().manual_seed(8))
    for k in ("actions", "starts", "valid"):
        assert torch.equal(one[k], two[k])
    assert all(torch.equal(one["obs"][g], two["obs"][g]) for g in one["obs"])
    assert not torch.equal(one["actions"], other["actions"])


def test_bad_windows_and_empty_demonstrations_are_config_errors():
    with pytest.raises(ConfigError, match="seq_len"):
        DemoSequences(synthetic(ENDS), "policy", seq_len=0)
    with pytest.raises(ConfigError, match="at least one episode"):
        DemoSequences({"obs": np.zeros((0, 2)), "action": np.zeros((0, 2)), "ends": np.zeros(0, int)}, "policy", 4)


SMALL = {"d_model": 32, "n_heads": 2, "n_layers": 2, "n_memory": 3, "block": 4, "init": "default",
         "head_hidden": [32], "init_std": 1.0}


def student_policy(make, prev_action="off"):
    env = make("pick_loose", num_envs=2, episode_length=10, num_threads=1)
    spec, A = env.obs_spec, env.num_actions
    torch.manual_seed(0)
    student = build_student("transformer", spec, {**SMALL, "prev_action": prev_action, "action_dim": A})
    policy = StudentActorCritic(student, spec.dim("privileged"), critic_hidden=[16])
    g = np.random.default_rng(0)
    ends = np.array([9, 20, 23, 40])
    arrays = {"obs": g.normal(size=(40, spec.dim("policy"))).astype(np.float32),
              "action": np.full((40, A), 2.5, np.float32),  # raw, outside the env's bounds: far from the mean
              "ends": ends}
    arrays["action"][:, 0] = -2.5
    return policy, DemoSequences(arrays, "policy", seq_len=6, burn_in=4)


def spy_on_the_actor(policy):
    calls = []
    evaluate_actor = policy.evaluate_actor

    def spy(obs, memory0=None, starts=None):
        dist = evaluate_actor(obs, memory0, starts)
        dist.loc.retain_grad()
        calls.append((obs, memory0, starts, dist))
        return dist

    policy.evaluate_actor = spy
    return calls


def test_the_imitation_gradient_on_the_mean_is_the_masked_error_towards_the_demonstrated_action(make):
    policy, seqs = student_policy(make)
    calls = spy_on_the_actor(policy)
    ppo = PPO(policy, PPOConfig(bc_coef=0.5), generator=torch.Generator().manual_seed(1))
    ppo.set_demonstration_sequences(seqs)
    loss = ppo._imitation_loss(8)
    loss.backward()
    (obs, memory0, starts, dist), = calls
    assert set(obs) == {"policy"}  # no prev_action for a student that does not read it
    windows = seqs.sample(8, torch.Generator().manual_seed(1))  # the same draw as PPO's generator made
    # the actor runs the last L steps from the memory its burn-in built without gradient ...
    assert torch.equal(starts, windows["starts"][:, B:]) and torch.equal(obs["policy"], windows["obs"]["policy"][:, B:])
    assert not any(t.requires_grad for t in (memory0.tokens, memory0.k, memory0.v))
    # ... which is the same forward as the whole window in one pass
    with torch.no_grad():
        whole = policy.student.forward_sequence({"policy": windows["obs"]["policy"]}, windows["starts"])[0]
    torch.testing.assert_close(dist.mean.detach(), whole.mean[:, B:], rtol=1e-5, atol=1e-6)
    valid, actions = windows["valid"][:, B:], windows["actions"][:, B:]
    assert windows["valid"][:, :B].sum() == 0
    error = dist.mean.detach() - actions  # (N, L, A)
    A = actions.shape[-1]
    torch.testing.assert_close(loss.detach(), 0.5 * error.pow(2).mean(-1)[valid].mean())
    # d loss / d mean = coef * 2 (mean - action) / (A * #valid) on the valid steps, zero on the rest
    torch.testing.assert_close(dist.loc.grad, 0.5 * 2 * error * valid[..., None] / (A * valid.sum()))
    assert (dist.loc.grad[~valid] == 0).all() and (torch.sign(dist.loc.grad[valid]) == torch.sign(error[valid])).all()


def test_a_few_steps_on_the_imitation_term_alone_lower_the_masked_error(make):
    policy, seqs = student_policy(make, prev_action="on")
    calls = spy_on_the_actor(policy)
    ppo = PPO(policy, PPOConfig(bc_coef=1.0, learning_rate=3e-3), generator=torch.Generator().manual_seed(1))
    ppo.set_demonstration_sequences(seqs)
    fixed = seqs.sample(16, torch.Generator().manual_seed(5))  # one held batch measures the error

    def masked_error():
        with torch.no_grad():
            dist = policy.student.forward_sequence(fixed["obs"], fixed["starts"])[0]
        return (dist.mean - fixed["actions"]).pow(2).mean(-1)[fixed["valid"]].mean().item()

    before = masked_error()
    for _ in range(15):
        loss = ppo._imitation_loss(8)
        ppo.optimizer.zero_grad()
        loss.backward()
        ppo.optimizer.step()
    assert set(calls[0][0]) == {"policy", "prev_action"}  # the student reads the previous action: it gets it
    print(f"masked MSE {before:.3f} -> {masked_error():.3f}")
    assert masked_error() < 0.5 * before, (before, masked_error())


def test_no_imitation_term_without_a_coefficient_and_sequences_only_for_a_student(make):
    policy, seqs = student_policy(make)
    ppo = PPO(policy, PPOConfig(bc_coef=0.0))
    ppo.set_demonstration_sequences(seqs)
    assert ppo._imitation_loss(8) is None
    decayed = PPO(policy, PPOConfig(bc_coef=1.0, bc_decay=0.0))
    decayed.set_demonstration_sequences(seqs)
    decayed.actor_updates = 1
    assert decayed._imitation_loss(8) is None  # weight 1 * 0**1
    with pytest.raises(ValueError, match="set_demonstrations"):  # an MLP actor-critic takes (obs, action) pairs
        PPO(MLPActorCritic(MLPPolicyConfig(actor_dim=2, critic_dim=2)), PPOConfig(bc_coef=1.0)
            ).set_demonstration_sequences(seqs)


def test_an_mlp_student_goes_through_the_sequence_path_and_imitates_a_window_per_sequence(make):
    policy, seqs = student_policy(make)
    spec, A = policy.student.spec, policy.student.cfg.action_dim
    mlp = StudentActorCritic(build_student("mlp", spec, {"action_dim": A, "hidden": [16], "head_hidden": [16]}),
                             spec.dim("privileged"), critic_hidden=[16])
    calls = spy_on_the_actor(mlp)
    ppo = PPO(mlp, PPOConfig(bc_coef=1.0), generator=torch.Generator().manual_seed(1))
    ppo.set_demonstration_sequences(seqs)
    assert mlp.is_recurrent  # StudentActorCritic: sequences for every student kind (an MLP's memory is None)
    assert ppo._imitation_loss(13) > 0
    assert calls[0][0]["policy"].shape[:2] == (13, 6)  # 13 sequences: 13 windows of seq_len 6 after their burn-in
    assert calls[0][1] is None  # an MLP's burn-in builds no memory
