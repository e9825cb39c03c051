"""PPO core: GAE, time-out bootstrapping, the unclipped std and raw actions, adaptive lr, learning,
exact resume, and the NaN guard."""

import math

import pytest
import torch

from rl.networks import MLPActorCritic, MLPPolicyConfig
from rl.ppo import NonFiniteError, PPOConfig, adapt_learning_rate, gaussian_kl
from rl.runner import OnPolicyRunner, RunnerConfig
from rl.storage import gae
from tests.toy_env import PointReach


def tiny_policy(obs_dim=2, action_dim=2, init_std=1.0):
    return MLPActorCritic(MLPPolicyConfig(actor_dim=obs_dim, critic_dim=obs_dim, action_dim=action_dim,
                                          actor_hidden=[32, 32], critic_hidden=[32, 32], init_std=init_std))


def test_gae_matches_a_hand_computed_case_with_termination_and_time_out():
    g, lam = 0.9, 0.8
    # one env, 4 steps: step 1 terminates, step 3 times out with V(final_obs) = 2.0 folded into its reward
    v_final = 2.0
    rewards = torch.tensor([[1.0], [0.0], [0.5], [1.0 + g * v_final]])
    values = torch.tensor([[0.5], [0.4], [0.3], [0.2]])
    dones = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    last = torch.tensor([9.0])  # must be ignored: the last step is done
    adv, ret = gae(rewards, values, dones, last, g, lam)
    d3 = (1.0 + g * v_final) - 0.2
    d2 = 0.5 + g * 0.2 - 0.3
    d1 = 0.0 - 0.4
    d0 = 1.0 + g * 0.4 - 0.5
    expected = [d0 + g * lam * d1, d1, d2 + g * lam * d3, d3]
    assert torch.allclose(adv.flatten(), torch.tensor(expected), atol=1e-6)
    assert torch.allclose(ret, adv + values)


def test_time_out_bootstraps_with_value_of_the_final_observation():
    env = PointReach(num_envs=4, horizon=3)
    policy = tiny_policy()
    runner = OnPolicyRunner(env, policy, PPOConfig(), RunnerConfig(num_steps_per_env=3, random_initial_lengths=False))
    runner.obs = env.reset(seed=0)
    captured = {}
    original_step = env.step

    def spy_step(action):
        out = original_step(action)
        captured["final"] = out[3]["final_obs"]
        captured["next"] = out[0]
        captured["reward"] = out[1].clone()
        captured["time_outs"] = out[3]["time_outs"]
        return out

    env.step = spy_step
    runner.collect_rollout()
    timed_out = captured["time_outs"]
    assert timed_out.any()
    with torch.no_grad():
        v_final = policy.value(captured["final"])
        v_next = policy.value(captured["next"])
    stored = runner.storage.rewards[2]
    expected = captured["reward"] + 0.99 * v_final * timed_out
    assert torch.allclose(stored, expected, atol=1e-6)
    assert not torch.allclose(stored[timed_out], (captured["reward"] + 0.99 * v_next)[timed_out])


def test_log_std_moves_below_any_floor_through_the_real_update_and_rollout():
    # A negative entropy bonus drives the std down through PPO.update and the runner as they are, so a
    # clamp anywhere in the update, the optimizer step, the policy or the rollout's sampling would stop it.
    policy = tiny_policy(init_std=math.exp(-3.0))
    runner = OnPolicyRunner(PointReach(num_envs=16, seed=0), policy,
                            PPOConfig(entropy_coef=-1.0, schedule="fixed", learning_rate=0.1),
                            RunnerConfig(num_steps_per_env=8, seed=0))
    runner.learn(num_iterations=6, progress=False)
    assert policy.log_std.max().item() < -12.0  # below std 6e-6; rsl_rl-style floors sit at 1e-2 .. 1e-6
    runner.collect_rollout()  # the next rollout samples with exactly that std
    assert torch.equal(runner.storage.stds[0, 0], policy.log_std.detach().exp())
    dist = policy.distribution({"privileged": torch.zeros(5, 2)})
    assert torch.equal(dist.stddev, policy.log_std.exp().expand(5, 2))


def test_logged_gradient_statistics_are_the_per_minibatch_norms_before_clipping():
    torch.manual_seed(0)
    policy = tiny_policy()
    runner = OnPolicyRunner(PointReach(num_envs=16, seed=0), policy, PPOConfig(max_grad_norm=0.01),
                            RunnerConfig(num_steps_per_env=8, seed=0))
    seen: dict[str, list[torch.Tensor]] = {}
    for name, p in policy.named_parameters():  # each backward hands every parameter its whole gradient
        p.register_hook(lambda g, name=name: seen.setdefault(name, []).append(g.detach().clone()))
    stats = runner.learn(num_iterations=1, progress=False)
    n_batches = runner.ppo.cfg.num_epochs * runner.ppo.cfg.num_minibatches
    for name, grads in seen.items():
        assert len(grads) == n_batches
        assert stats[f"grad_l2/{name}"] == pytest.approx(sum(g.norm().item() for g in grads) / n_batches, rel=1e-5)
        assert stats[f"grad_max/{name}"] == pytest.approx(max(g.abs().max().item() for g in grads), rel=1e-6)
    assert stats["grad_l2/actor.0.weight"] > 0.01  # measured before the 0.01 clip, not after


def test_stored_actions_are_raw_and_can_leave_the_bounds():
    env = PointReach(num_envs=16)
    runner = OnPolicyRunner(env, tiny_policy(init_std=3.0), PPOConfig(), RunnerConfig(num_steps_per_env=8))
    runner.obs = env.reset(seed=0)
    runner.collect_rollout()
    actions = runner.storage.actions
    assert actions.abs().max() > 2.0
    dist, _ = runner.policy.evaluate({"privileged": runner.storage.obs["privileged"]})
    assert torch.allclose(dist.log_prob(actions).sum(-1), runner.storage.log_probs, atol=1e-5)


def test_adaptive_learning_rate_falls_above_target_and_rises_below():
    cfg = PPOConfig(desired_kl=0.01)
    assert adapt_learning_rate(1e-3, 0.05, cfg) < 1e-3
    assert adapt_learning_rate(1e-3, 0.001, cfg) > 1e-3
    assert adapt_learning_rate(1e-3, 0.01, cfg) == 1e-3
    # and inside a real update: a huge step size makes the measured KL explode, so the lr drops
    env = PointReach(num_envs=32)
    runner = OnPolicyRunner(env, tiny_policy(), PPOConfig(learning_rate=0.05, lr_max=1.0),
                            RunnerConfig(num_steps_per_env=16))
    runner.obs = env.reset(seed=0)
    runner.collect_rollout()
    stats = runner.ppo.update(runner.storage)
    assert stats["kl"] > 0.01 and runner.ppo.learning_rate < 0.05


def test_ppo_learns_point_reach_within_seconds():
    torch.manual_seed(0)
    env = PointReach(num_envs=64, horizon=30, seed=0)
    runner = OnPolicyRunner(env, tiny_policy(), PPOConfig(), RunnerConfig(num_steps_per_env=16, num_iterations=40,
                                                                            seed=0))
    first = None
    for it in range(40):
        stats = runner.learn(num_iterations=it + 1, progress=False)
        if it == 4:
            first = stats["success_rate"]
    assert first < 0.6
    assert stats["success_rate"] > 0.9


def test_normaliser_learns_each_rollout_after_its_update_as_rsl_rl_5():
    """When the observation normaliser sees which samples (rsl-rl-lib 5.5.1's order, and what
    bench/ppo_vs_rsl_rl.py measured against): rollout k is sampled and its update run with the
    statistics of rollouts 1..k-1 (so every update's first minibatch has ratio exactly 1 and KL 0),
    and the rollout's own observations (those acted on, not the final observations of finished
    episodes) are merged after its update."""
    T, N = 4, 16
    policy = tiny_policy()
    runner = OnPolicyRunner(PointReach(num_envs=N, horizon=5, seed=0), policy, PPOConfig(),
                            RunnerConfig(num_steps_per_env=T, random_initial_lengths=False))
    seen: list[torch.Tensor] = []  # every rollout's stored observations, (T * N, 2)
    at_update: list[tuple[float, torch.Tensor]] = []  # normaliser (count, mean) when each update starts
    first_kl: list[float] = []
    update = runner.ppo.update

    def spy(storage, update_actor=True):
        seen.append(storage.obs["privileged"].reshape(T * N, 2).clone())
        at_update.append((float(policy.actor_norm.count), policy.actor_norm.mean.clone()))
        batch = next(storage.minibatches(1, 1))
        with torch.no_grad():
            dist, _ = policy.evaluate(batch["obs"])
        first_kl.append(float(gaussian_kl(batch["means"], batch["stds"], dist.mean, dist.stddev).max()))
        return update(storage, update_actor)

    runner.ppo.update = spy
    runner.learn(num_iterations=3, progress=False)
    assert [c for c, _ in at_update] == [0.0, T * N, 2 * T * N]
    assert torch.allclose(at_update[2][1], torch.cat(seen[:2]).mean(0), atol=1e-6)
    assert float(policy.actor_norm.count) == 3 * T * N
    everything = torch.cat(seen)
    assert torch.allclose(policy.actor_norm.mean, everything.mean(0), atol=1e-6)
    assert torch.allclose(policy.actor_norm.var, everything.var(0, unbiased=False), atol=1e-5)
    assert max(first_kl) < 1e-10


def _metrics_without_timing(m):
    return {k: v for k, v in m.items() if not k.startswith(("s_per", "env_steps_per_s"))}


def test_resume_equals_an_uninterrupted_run(tmp_path, make):
    class Recorder:
        def __init__(self):
            self.rows = []

        def log(self, m, step):
            self.rows.append(_metrics_without_timing(m))

    def new_runner(logger):
        # short episodes, so envs auto-reset after the resume point and their fresh scenes count too
        env = make("lift", num_envs=8, episode_length=10, perturbations={"drop_rate": 0.05}, occlusion={"rate": 0.1})
        torch.manual_seed(0)
        policy = MLPActorCritic(MLPPolicyConfig(actor_dim=env.obs_spec.dim("privileged"),
                                                critic_dim=env.obs_spec.dim("privileged"),
                                                actor_hidden=[32], critic_hidden=[32]))
        return OnPolicyRunner(env, policy, PPOConfig(num_epochs=2, num_minibatches=2),
                              RunnerConfig(num_steps_per_env=8, num_iterations=4, seed=3, save_every=2), logger=logger)

    full = Recorder()
    new_runner(full).learn(progress=False)
    part = Recorder()
    ckpt_path = tmp_path / "ckpt.pt"
    new_runner(part).learn(num_iterations=2, checkpoint_path=ckpt_path, progress=False)
    resumed = Recorder()
    runner = new_runner(resumed)
    runner.load(torch.load(ckpt_path, weights_only=True))
    episodes_at_resume = runner.env.st["episode_index"].copy()
    runner.learn(progress=False)
    assert (runner.env.st["episode_index"] - episodes_at_resume).min() >= 1  # every env reset after the resume
    assert part.rows == full.rows[:2]
    assert resumed.rows == full.rows[2:]


def test_nan_reward_stops_training_with_a_clear_message_and_no_checkpoint(tmp_path):
    env = PointReach(num_envs=8)
    original = env.step
    calls = {"n": 0}

    def poisoned(action):
        obs, reward, done, extras = original(action)
        calls["n"] += 1
        if calls["n"] == 2:
            reward = reward.clone()
            reward[3] = float("nan")
        return obs, reward, done, extras

    env.step = poisoned
    runner = OnPolicyRunner(env, tiny_policy(), PPOConfig(), RunnerConfig(num_steps_per_env=4, save_every=1))
    ckpt = tmp_path / "teacher.pt"
    with pytest.raises(NonFiniteError, match="non-finite reward from envs \\[3\\]"):
        runner.learn(num_iterations=3, checkpoint_path=ckpt, progress=False)
    assert not ckpt.exists()  # the NaN came in the first rollout, before the first save


def test_critic_warmup_moves_only_the_critic():
    env = PointReach(num_envs=16)
    policy = tiny_policy()
    actor_before = [p.clone() for p in policy.actor.parameters()] + [policy.log_std.clone()]
    critic_before = [p.clone() for p in policy.critic.parameters()]
    runner = OnPolicyRunner(env, policy, PPOConfig(), RunnerConfig(num_steps_per_env=8, critic_warmup_iterations=2))
    runner.learn(num_iterations=2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(actor_before, list(policy.actor.parameters()) + [policy.log_std]))
    assert not all(torch.equal(a, b) for a, b in zip(critic_before, policy.critic.parameters()))
    runner.learn(num_iterations=3, progress=False)  # after the warm-up the actor moves
    assert not all(torch.equal(a, b) for a, b in zip(actor_before, policy.actor.parameters()))


def test_the_actor_starts_at_its_own_small_step_after_the_critic_warmup():
    def first_actor_kl(start_lr):
        torch.manual_seed(0)
        env = PointReach(num_envs=16)
        runner = OnPolicyRunner(env, tiny_policy(), PPOConfig(learning_rate=1e-2, schedule="fixed"),
                                RunnerConfig(num_steps_per_env=8, critic_warmup_iterations=2,
                                             actor_start_learning_rate=start_lr))
        runner.learn(num_iterations=2, progress=False)
        assert runner.ppo.learning_rate == 1e-2  # the critic warms up at the configured step
        kl = runner.learn(num_iterations=3, progress=False)["kl"]
        assert runner.ppo.learning_rate == (start_lr or 1e-2)
        return kl

    # the first actor update moves the policy far less from a small start than from the critic's step
    assert first_actor_kl(1e-5) < 0.01 * first_actor_kl(None)


def test_imitation_term_pulls_the_mean_to_demonstrations_and_decays():
    def mean_after(bc_coef, bc_decay=1.0, updates=5):
        torch.manual_seed(0)
        env = PointReach(num_envs=16)
        runner = OnPolicyRunner(env, tiny_policy(), PPOConfig(bc_coef=bc_coef, bc_decay=bc_decay),
                                RunnerConfig(num_steps_per_env=8))
        demo_obs = {"privileged": torch.randn(256, 2, generator=torch.Generator().manual_seed(1))}
        runner.ppo.set_demonstrations(demo_obs, torch.full((256, 2), 3.0))  # raw, outside the bounds
        stats = runner.learn(num_iterations=updates, progress=False)
        with torch.no_grad():
            return runner.policy.act(demo_obs)[0].mean.mean().item(), stats["imitation_loss"]

    plain, no_loss = mean_after(0.0)
    imitating, loss = mean_after(10.0)
    assert no_loss == 0.0 and loss > 0.0
    assert imitating > plain + 0.5  # the mean moved towards the demonstrated 3.0
    _, decayed = mean_after(10.0, bc_decay=0.0, updates=2)
    assert decayed == 0.0  # weight 10 * 0**1 in the second update


def test_frozen_actor_normaliser_stays_while_the_critic_goes_on_and_survives_a_checkpoint():
    policy = tiny_policy()
    g = torch.Generator().manual_seed(0)
    policy.update_normalizers({"privileged": torch.randn(256, 2, generator=g)})
    policy.freeze_actor_normalizer()
    actor_mean, critic_mean = policy.actor_norm.mean.clone(), policy.critic_norm.mean.clone()
    assert torch.equal(actor_mean, critic_mean)  # the critic starts from the shared statistics
    policy.update_normalizers({"privileged": 5.0 + torch.randn(256, 2, generator=g)})
    assert torch.equal(policy.actor_norm.mean, actor_mean)
    assert (policy.critic_norm.mean > critic_mean + 1.0).all()
    again = tiny_policy()
    again.load_state_dict(policy.state_dict())
    assert bool(again.actor_norm.frozen) and torch.equal(again.critic_norm.mean, policy.critic_norm.mean)
    old = {k: v for k, v in tiny_policy().state_dict().items() if not k.endswith("frozen")}
    tiny_policy().load_state_dict(old)  # checkpoints from before the flag still load


def test_behaviour_cloning_warm_start_fits_the_expert(make):
    from teacher.ppo_teacher import behaviour_clone, expert_pairs

    env = make("lift", num_envs=8)
    dim = env.obs_spec.dim("privileged")
    policy = MLPActorCritic(MLPPolicyConfig(actor_dim=dim, critic_dim=dim, action_dim=5, actor_hidden=[64, 64],
                                            critic_hidden=[32]))
    obs, actions = expert_pairs(env, seed=0, steps=40)
    assert obs["privileged"].shape == (320, dim) and actions.shape == (320, 5)
    stats = behaviour_clone(policy, obs, actions, steps=300, batch=128, lr=1e-3, seed=0)
    assert stats["bc_loss_last"] < 0.3 * stats["bc_loss_first"]
    # behaviour_clone optimises every actor parameter, log-std included: the std stays because the
    # regression of the mean does not touch it, so a loss that did (a Gaussian NLL) would move it here
    assert torch.equal(policy.log_std.detach(), torch.zeros(5))


def test_nearest_first_makes_the_teacher_indifferent_to_the_cube_numbering(make):
    from omegaconf import OmegaConf

    from rl.networks import nearest_first
    from teacher.ppo_teacher import build_policy, cube_blocks

    env = make("stack_pick_multi", num_envs=8)
    obs = env.reset(seed=1)
    blocks, key = cube_blocks(env.obs_spec, "privileged")
    assert len(blocks) == 3 and key[1] == 3
    (a0, b0), (a1, b1), (a2, b2) = blocks
    x = obs["privileged"]
    swapped = torch.cat([x[:, :a0], x[:, a2:b2], x[:, a1:b1], x[:, a0:b0], x[:, b2:]], 1)  # cube0 <-> cube2
    assert not torch.equal(swapped, x)
    ordered = nearest_first(x, blocks, key)
    dist = torch.stack([ordered[:, a + key[0]:a + key[0] + key[1]].norm(dim=1) for a, _ in blocks], 1)
    assert (dist[:, :-1] <= dist[:, 1:]).all()
    assert torch.equal(nearest_first(swapped, blocks, key), ordered)
    cfg = OmegaConf.create({"obs_group": "privileged", "actor_hidden": [32], "critic_hidden": [32], "init_std": 1.0})
    for sort in (True, False):
        torch.manual_seed(0)
        policy = build_policy(env, OmegaConf.merge(cfg, {"sort_cubes": sort}))
        same_action = torch.allclose(policy.act_inference({"privileged": swapped})[0],
                                     policy.act_inference(obs)[0], atol=1e-6)
        same_value = torch.allclose(policy.value({"privileged": swapped}), policy.value(obs), atol=1e-6)
        assert same_action == sort and same_value == sort


def test_selection_keeps_the_best_weights_by_closed_loop_success_and_survives_a_checkpoint(tmp_path):
    from common.evaluate import evaluate
    from common.selection import BestCheckpoint

    def selector():
        return BestCheckpoint(lambda: PointReach(num_envs=32, horizon=30), every=5, episodes=32, seed=0)

    torch.manual_seed(0)
    env = PointReach(num_envs=64, horizon=30, seed=0)
    runner = OnPolicyRunner(env, tiny_policy(), PPOConfig(), RunnerConfig(num_steps_per_env=16, num_iterations=20,
                                                                            seed=0), selector=selector())
    runner.learn(checkpoint_path=tmp_path / "ckpt.pt", progress=False)
    history, best = runner.selector.history, runner.selector.best
    assert [it for it, _ in history] == [0, 5, 10, 15, 20]
    rates = [rate for _, rate in history]
    assert best["success_rate"] == max(rates) > rates[0]  # learning happened and was kept
    assert best["iteration"] == history[rates.index(max(rates))][0]  # ties: the earliest
    # the kept weights are a copy of that iteration's, not the live ones: replaying them gives its number
    kept = tiny_policy()
    kept.load_state_dict(best["model"])
    with torch.no_grad():
        replay = evaluate(PointReach(num_envs=32, horizon=30), lambda o: kept.act_inference(o)[0], lambda d: None,
                          32, seed=runner.selector.seed, progress=False)
    assert replay["success_rate"] == best["success_rate"]
    resumed = OnPolicyRunner(PointReach(num_envs=64, horizon=30), tiny_policy(), PPOConfig(),
                             RunnerConfig(num_steps_per_env=16, num_iterations=20), selector=selector())
    resumed.load(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert resumed.selector.history == history and resumed.selector.best["iteration"] == best["iteration"]


def test_bounds_penalty_has_no_gradient_inside_the_bounds():
    from rl.ppo import bounds_loss

    mu = torch.tensor([[3.0, -2.5, 0.5, -0.9, 1.0]], requires_grad=True)
    loss = bounds_loss(mu)
    loss.backward()
    assert loss.item() == pytest.approx(2.0**2 + 1.5**2)
    assert mu.grad.tolist() == [[4.0, -3.0, 0.0, 0.0, 0.0]]  # d/dmu relu(|mu| - 1)^2; exactly 0 inside


def test_bounds_penalty_pulls_an_out_of_bounds_mean_inside_through_the_ppo_update():
    def means_after(bounds_coef):
        torch.manual_seed(0)
        policy = tiny_policy(init_std=0.3)
        with torch.no_grad():  # the mean starts at (3.0, 0.3) everywhere: one dimension far outside
            policy.actor[-1].weight.zero_()
            policy.actor[-1].bias.copy_(torch.tensor([3.0, 0.3]))
        runner = OnPolicyRunner(PointReach(num_envs=16, seed=0), policy,
                                PPOConfig(bounds_coef=bounds_coef, schedule="fixed", learning_rate=0.02),
                                RunnerConfig(num_steps_per_env=8, seed=0))
        stats = runner.learn(num_iterations=5, progress=False)
        with torch.no_grad():
            mean = policy.act({"privileged": torch.rand(256, 2) * 2 - 1})[0].mean
        return mean, stats["bounds_loss"], policy.log_std.detach().clone()

    free, free_loss, _ = means_after(0.0)
    pulled, pulled_loss, log_std = means_after(10.0)
    assert free[:, 0].min() > 2.0 and free_loss > 1.0  # PPO alone leaves it far outside (logged all the same)
    assert pulled[:, 0].abs().max() < 1.3 and pulled_loss < 0.1  # the penalty brought it in
    assert torch.isfinite(log_std).all()
