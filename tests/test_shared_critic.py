"""The shared critic (rl/student_actor_critic.py, critic=shared): a value head on the student's trunk features.

The rollout's values come from the pass that gave the action and equal evaluate()'s on the stored sequences;
the time-out bootstrap does not advance the memory; the warm-up leaves the student bitwise unchanged; with
value_grad_to_trunk=False no value gradient reaches the trunk; the config rebuilds the same module."""

import math

import pytest
import torch

from envs.base import ConfigError
from rl.networks import split_parameters
from rl.ppo import PPO, PPOConfig, gaussian_kl
from rl.recurrent_storage import RecurrentRolloutStorage, RolloutCarry, carry_inputs, collect_rollout, memory_env_dims
from rl.runner import OnPolicyRunner, RunnerConfig
from rl.student.model import build_student, student_from_config
from rl.student_actor_critic import StudentActorCritic
from tests.test_student_ppo import CFG, EPISODE, L, N, T, env_and_student  # episodes of 10 steps end inside sequences

STUDENTS = {
    # obs_skip and the previous action: the head's input is [ACT output, normalised obs], prev action read
    "transformer": ("transformer", {"d_model": 32, "n_heads": 2, "n_layers": 2, "n_memory": 3, "block": 4,
                                    "init": "default", "head_hidden": [32], "obs_skip": True, "prev_action": "on"}),
    "rnn": ("rnn", {"hidden": [32], "rnn_hidden": 32, "rnn_layers": 2, "head_hidden": [32]}),
    "mlp": ("mlp", {"hidden": [32], "head_hidden": [32]}),
}


def setup(make, name: str, **kwargs):
    env, obs, student = env_and_student(make, *STUDENTS[name])
    policy = StudentActorCritic(student, critic="shared", critic_hidden=[32, 32], **kwargs)
    obs_dims = {"policy": env.obs_spec.dim("policy")}
    if student.cfg.prev_action != "off":
        obs_dims["prev_action"] = env.num_actions
    storage = RecurrentRolloutStorage(T, N, obs_dims, env.num_actions, L, memory_env_dims(student))
    return env, policy, storage, RolloutCarry(obs)


def rollout(env, policy, storage, carry, gen, value_fn="policy"):
    storage.clear()
    value_fn = policy.value if value_fn == "policy" else value_fn
    carry = collect_rollout(env, policy, storage, carry, gen, value_fn=value_fn, gamma=CFG.gamma)
    with torch.no_grad():
        storage.compute_returns(policy.value(carry_inputs(carry), carry.memory), CFG.gamma, CFG.lam)
    return carry


def _student_state(policy):
    return {k: v.clone() for k, v in policy.student.state_dict().items()}


def test_the_value_head_is_the_critic_and_reads_the_heads_input(make):
    env, policy, storage, carry = setup(make, "transformer")
    actor, critic = split_parameters(policy)
    assert {id(p) for p in actor} == {id(p) for p in policy.student.parameters()}
    assert {id(p) for p in critic} == {id(p) for p in policy.critic_head.parameters()}
    # obs_skip: the value head's input is the Gaussian head's, ACT output + the normalised obs
    assert policy.critic_head[0].in_features == 32 + env.obs_spec.dim("policy")
    assert policy.critic_obs == "policy" and not hasattr(policy, "critic_norm")
    inputs = {**carry.obs, "prev_action": torch.zeros(N, env.num_actions)}
    memory = policy.initial_memory(N)
    dist, new_memory = policy.student.act(inputs, memory)
    dist2, new_memory2, values = policy.act_value(inputs, memory)
    assert torch.equal(dist.mean, dist2.mean) and torch.equal(new_memory.tokens, new_memory2.tokens)
    assert torch.equal(policy.value(inputs, memory), values) and values.shape == (N,)


@pytest.mark.parametrize("name", list(STUDENTS))
def test_rollout_values_come_from_the_acting_pass_and_equal_evaluate(make, name):
    env, policy, storage, carry = setup(make, name)
    steps, value_calls = [], []
    step_features, value = policy.student.step_features, policy.value

    def spy_features(*args):
        steps.append(1)
        return step_features(*args)

    def spy_value(obs, memory=None):
        value_calls.append(len(next(iter(obs.values()))))
        return value(obs, memory)

    policy.student.step_features, policy.value = spy_features, spy_value
    rollout(env, policy, storage, carry, torch.Generator().manual_seed(1))
    assert storage.starts[1:].any()
    # one trunk pass per step; value() only for the last obs (N rows) and the timed-out rows
    n_time_outs = int(storage.starts[1:].sum())  # every episode end here is a time-out (10-step episodes)
    assert value_calls[-1] == N and sum(value_calls[:-1]) == n_time_outs > 0
    assert len(steps) == T + len(value_calls)
    policy.student.step_features, policy.value = step_features, value

    batch = next(storage.sequence_minibatches(1, 1))  # every sequence, in some order
    with torch.no_grad():
        dist, values = policy.evaluate(batch["obs"], batch["memory0"], batch["starts"])
    assert values.shape == batch["values"].shape == (T // L * N, L)
    assert torch.allclose(values, batch["values"], atol=1e-5)
    assert batch["values"].abs().max() > 1e-3  # not trivially zero
    log_probs = dist.log_prob(batch["actions"]).sum(-1)
    assert (log_probs - batch["log_probs"]).abs().max() < 1e-5

    # and PPO's first minibatch sees ratio 1 and the rollout's values
    calls, evaluate = [], policy.evaluate

    def spy_evaluate(obs, memory0=None, starts=None):
        out = evaluate(obs, memory0, starts)
        calls.append((out[0].mean.detach(), out[0].stddev.detach(), out[1].detach(), obs))
        return out

    first = next(storage.sequence_minibatches(CFG.num_minibatches, CFG.num_epochs, torch.Generator().manual_seed(2)))
    policy.evaluate = spy_evaluate
    stats = PPO(policy, CFG, generator=torch.Generator().manual_seed(2)).update(storage)
    mean, std, values, _ = calls[0]
    assert torch.allclose(values, first["values"], atol=1e-5)
    assert abs(gaussian_kl(first["means"], first["stds"], mean, std).mean().item()) < 1e-8
    assert all(math.isfinite(v) for v in stats.values())


def test_the_time_out_bootstrap_reads_the_episodes_history_and_does_not_advance_the_memory(make):
    env, policy, storage, carry = setup(make, "transformer")
    finals = {}

    def on_step(t, next_obs, rewards, dones, extras):  # the true last obs of each timed-out episode
        for n in extras["time_outs"].nonzero().flatten().tolist():
            finals[(t, n)] = {k: v[n] for k, v in extras["final_obs"].items()}

    collect_rollout(env, policy, storage, carry, torch.Generator().manual_seed(1), value_fn=policy.value,
                    gamma=CFG.gamma, on_step=on_step)
    env2, policy2, storage2, carry2 = setup(make, "transformer")
    policy2.load_state_dict(policy.state_dict())
    collect_rollout(env2, policy2, storage2, carry2, torch.Generator().manual_seed(1))
    # the same actions: the bootstrap's extra step did not move the carried memory
    assert torch.equal(storage.actions, storage2.actions)
    bonus = storage.rewards - storage2.rewards  # (T, N): gamma V(final_obs) at time-outs, nothing elsewhere
    assert len(finals) > 0 and int((bonus != 0).sum()) == len(finals)
    for (t, n), final in finals.items():
        # the reference: the episode from its first step to t, then the final obs, from a fresh memory
        s = int(storage.starts[: t + 1, n].nonzero().max())
        final = {**final, "prev_action": storage.actions[t, n]}  # the action that led to the final obs
        obs_seq = {k: torch.cat([storage.obs[k][s: t + 1, n], final[k][None]])[None] for k in ("policy", "prev_action")}
        with torch.no_grad():
            features, _ = policy.student.sequence_features(obs_seq)  # (1, t - s + 2, F)
            expected = policy.critic_head(features[0, -1]).squeeze(-1)
        assert torch.allclose(bonus[t, n], CFG.gamma * expected, atol=1e-5), (t, n)


@pytest.mark.parametrize("to_trunk", [False, True])
def test_warm_up_moves_only_the_value_head(make, to_trunk):
    env, policy, storage, carry = setup(make, "rnn", value_grad_to_trunk=to_trunk)
    rollout(env, policy, storage, carry, torch.Generator().manual_seed(1))
    student = _student_state(policy)
    head = {k: v.clone() for k, v in policy.critic_head.state_dict().items()}
    ppo = PPO(policy, CFG, generator=torch.Generator().manual_seed(2))
    stats = ppo.update(storage, update_actor=False)
    assert all(torch.equal(v, policy.student.state_dict()[k]) for k, v in student.items())
    assert all(not torch.equal(v, policy.critic_head.state_dict()[k]) for k, v in head.items())
    assert not any(k.startswith("grad_l2/student.") for k in stats)  # no gradient reached the student at all
    ppo.update(storage)  # the actor's update moves the student
    assert any(not torch.equal(v, policy.student.state_dict()[k]) for k, v in student.items())


@pytest.mark.parametrize("name", ["transformer", "rnn"])
def test_value_grad_to_trunk_decides_whether_the_value_loss_reaches_the_trunk(make, name):
    grads = {}
    for to_trunk in (False, True):
        env, policy, storage, carry = setup(make, name, value_grad_to_trunk=to_trunk)
        rollout(env, policy, storage, carry, torch.Generator().manual_seed(1))
        policy.set_update_actor(True)  # after the warm-up
        batch = next(storage.sequence_minibatches(1, 1))
        dist, values = policy.evaluate(batch["obs"], batch["memory0"], batch["starts"])
        (values - batch["returns"]).pow(2).mean().backward()  # the value loss alone
        grads[to_trunk] = {n: p.grad for n, p in policy.named_parameters()}
        assert all(grads[to_trunk][n] is not None for n, _ in policy.critic_head.named_parameters(prefix="critic_head"))
        assert grads[to_trunk]["student.head.log_std"] is None  # the Gaussian head is never on the value's path
    assert all(g is None for n, g in grads[False].items() if n.startswith("student."))
    trunk = [g for n, g in grads[True].items() if n.startswith("student.") and not n.startswith("student.head.")]
    assert any(g is not None and g.abs().max() > 0 for g in trunk)  # the control: the option does reach it


@pytest.mark.parametrize("critic", ["shared", "privileged"])
def test_config_round_trip_rebuilds_the_same_module(tmp_path, make, critic):
    env, policy, storage, carry = setup(make, "transformer", value_grad_to_trunk=True)
    if critic == "privileged":
        policy = StudentActorCritic(policy.student, env.obs_spec.dim("privileged"), critic_hidden=[16])
    with torch.no_grad():  # weights other than a fresh init's
        for p in policy.parameters():
            p.add_(0.01 * torch.randn(p.shape))
    torch.save({"cfg": policy.config_dict(), "model": policy.state_dict()}, tmp_path / "p.pt")
    ckpt = torch.load(tmp_path / "p.pt", weights_only=True)
    torch.manual_seed(123)  # a different init: only the state_dict can make them equal
    rebuilt = StudentActorCritic.from_config(student_from_config(ckpt["cfg"]["student"]), ckpt["cfg"])
    rebuilt.load_state_dict(ckpt["model"])  # strict: the same parameter names
    assert rebuilt.config_dict() == policy.config_dict() and rebuilt.critic_kind == critic
    assert rebuilt.value_grad_to_trunk == (critic == "shared")
    inputs = {**carry.obs, "prev_action": torch.zeros(N, env.num_actions)}
    with torch.no_grad():
        a, b = policy.act_value(inputs, policy.initial_memory(N)), rebuilt.act_value(inputs, rebuilt.initial_memory(N))
    assert torch.equal(a[0].mean, b[0].mean) and torch.equal(a[2], b[2])


def test_bad_critic_configs_are_refused(make):
    env, policy, storage, carry = setup(make, "mlp")
    with pytest.raises(ConfigError, match="finetune.critic='asymmetric'; choose one of"):
        StudentActorCritic(policy.student, 8, critic="asymmetric")
    with pytest.raises(ConfigError, match="needs critic_dim"):
        StudentActorCritic(policy.student, critic="privileged")
    with pytest.raises(ConfigError, match="unknown keys"):
        StudentActorCritic.from_config(policy.student, {**policy.config_dict(), "critc_hidden": [8]})


def test_a_runner_with_the_shared_critic_warms_up_then_trains(make):
    env = make("pick_loose", num_envs=N, episode_length=EPISODE, num_threads=1)
    torch.manual_seed(0)
    kind, cfg = STUDENTS["transformer"]
    student = build_student(kind, env.obs_spec, {**cfg, "action_dim": env.num_actions})
    policy = StudentActorCritic(student, critic="shared", critic_hidden=[32])
    runner = OnPolicyRunner(env, policy, PPOConfig(num_epochs=1, num_minibatches=2),
                            RunnerConfig(num_steps_per_env=8, seq_len=4, num_iterations=2, critic_warmup_iterations=1))
    assert set(runner.storage.obs) == {"policy", "prev_action"}  # no privileged obs stored
    student0 = _student_state(policy)
    runner.learn(num_iterations=1, progress=False)
    assert all(torch.equal(v, policy.student.state_dict()[k]) for k, v in student0.items())
    last = runner.learn(progress=False)
    assert any(not torch.equal(v, policy.student.state_dict()[k]) for k, v in student0.items())
    assert math.isfinite(last["value_loss"]) and math.isfinite(last["explained_variance"])
