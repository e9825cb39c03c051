"""Recurrent rollout storage (rl/recurrent_storage.py): a real rollout of an unchanged student, recomputed
sequence by sequence from the stored memories and episode starts, gives the rollout's log-probs again
(PPO's ratio is 1 before the first update); sequences cover the rollout once per epoch; starts mark
exactly the episodes' first steps."""

import pytest
import torch

from rl.recurrent_storage import (
    RecurrentRolloutStorage,
    RolloutCarry,
    collect_rollout,
    index_memory,
    memory_env_dims,
    stack_memory,
)
from rl.student.model import build_student

SMALL = {"d_model": 32, "n_heads": 2, "n_layers": 2, "n_memory": 3, "block": 4, "init": "default",
         "head_hidden": [32], "init_std": 0.5}
STUDENTS = {
    "transformer": ("transformer", SMALL),
    # blocks of 3 (L = 6 below is not a multiple of 4 either way), 2 passes, the previous action read
    "transformer_p2_prev": ("transformer", {**SMALL, "block": 3, "passes": 2, "memory_update": "norm",
                                            "prev_action": "on"}),
    "rnn": ("rnn", {"hidden": [32], "rnn_hidden": 32, "rnn_layers": 2, "head_hidden": [32], "init_std": 0.5}),
    "mlp": ("mlp", {"hidden": [32], "head_hidden": [32], "init_std": 0.5}),
}
T, L, N, EPISODE = 24, 6, 4, 10  # episodes of 10 steps end inside sequences of 6


class CountingEnv:
    """The env, recording its episode step counter before each step (0: an episode's first step)."""

    def __init__(self, env):
        self.env, self.counters = env, []

    def step(self, actions):
        self.counters.append(self.env.episode_length_buf.clone())
        return self.env.step(actions)


def setup(make, name: str):
    env = make("pick_loose", num_envs=N, episode_length=EPISODE, num_threads=1)
    obs = env.reset(seed=0)
    env.episode_length_buf = torch.tensor([0, 3, 7, 9])  # desynchronised resets, as the runner does
    torch.manual_seed(0)
    kind, cfg = STUDENTS[name]
    student = build_student(kind, env.obs_spec, {**cfg, "action_dim": env.num_actions}).eval()
    student.fit_normalizer(obs["policy"] * 1.5 + 0.1)  # a normaliser other than the identity
    obs_dims = {"policy": env.obs_spec.dim("policy")}
    if getattr(student.cfg, "prev_action", "off") != "off":
        obs_dims["prev_action"] = env.num_actions
    storage = RecurrentRolloutStorage(T, N, obs_dims, env.num_actions, L, memory_env_dims(student))
    return CountingEnv(env), student, storage, RolloutCarry(obs)


@pytest.mark.parametrize("name", list(STUDENTS))
@torch.no_grad()
def test_recomputed_sequences_give_the_rollouts_log_probs(make, name):
    env, student, storage, carry = setup(make, name)
    gen, batch_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    for rollout in range(2):  # the second starts from the first's carried memory, mid-episode
        storage.clear()
        carry = collect_rollout(env, student, storage, carry, gen)
        assert storage.starts[1:].any() and storage.dones.any()  # resets inside the rollout
        assert (storage.actions.abs() > 1).any()  # raw actions: nothing clipped them
        storage.compute_returns(torch.zeros(N), 0.99, 0.95)
        worst, seen = 0.0, 0
        for batch in storage.sequence_minibatches(num_minibatches=3, num_epochs=1, generator=batch_gen):
            dist, _ = student.forward_sequence(batch["obs"], batch["starts"], batch["memory0"])
            log_probs = dist.log_prob(batch["actions"]).sum(-1)  # (B, L)
            assert log_probs.shape == batch["log_probs"].shape == (len(batch["indices"]), L)
            worst = max(worst, (log_probs - batch["log_probs"]).abs().max().item())
            torch.testing.assert_close(dist.mean, batch["means"], atol=1e-5, rtol=0)
            torch.testing.assert_close(dist.stddev, batch["stds"], atol=0, rtol=0)
            seen += batch["starts"][:, 1:].sum().item()
            if student.is_recurrent:  # the control: without the stored memory or the starts it differs
                for starts, memory0 in ((batch["starts"], None), (torch.zeros_like(batch["starts"]), batch["memory0"])):
                    other, _ = student.forward_sequence(batch["obs"], starts, memory0)
                    assert (other.log_prob(batch["actions"]).sum(-1) - batch["log_probs"]).abs().max() > 1e-3
        print(f"{name} rollout {rollout}: max |log-prob difference| {worst:.2e}")
        assert worst < 1e-5
        assert seen > 0  # some sequences reset their memory inside the window


def test_steps_not_a_multiple_of_seq_len_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of seq_len"):
        RecurrentRolloutStorage(10, 2, {"policy": 3}, 2, seq_len=4)
    with pytest.raises(ValueError, match="multiple of seq_len"):
        RecurrentRolloutStorage(10, 2, {"policy": 3}, 2, seq_len=0)


@torch.no_grad()
def test_minibatches_cover_every_sequence_once_per_epoch_with_its_own_steps(make):
    env, student, storage, carry = setup(make, "rnn")
    collect_rollout(env, student, storage, carry, torch.Generator().manual_seed(1))
    storage.compute_returns(torch.zeros(N), 0.99, 0.95)
    memory = stack_memory(storage.memories, storage.memory_dims)
    batches = list(storage.sequence_minibatches(5, num_epochs=2, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 10
    for epoch in (batches[:5], batches[5:]):
        ids = torch.cat([b["indices"] for b in epoch])
        assert sorted(ids.tolist()) == list(range(T // L * N))  # each sequence exactly once
    for b in batches[:5]:
        for row, s in enumerate(b["indices"].tolist()):
            j, n = divmod(s, N)
            steps = slice(j * L, (j + 1) * L)
            assert torch.equal(b["obs"]["policy"][row], storage.obs["policy"][steps, n])
            assert torch.equal(b["actions"][row], storage.actions[steps, n])
            assert torch.equal(b["advantages"][row], storage.advantages[steps, n])
            assert torch.equal(b["starts"][row], storage.starts[steps, n])
            mine = index_memory(memory, torch.tensor([s]), storage.memory_dims)
            assert torch.equal(b["memory0"].h[:, row], mine.h[:, 0])
            assert torch.equal(b["memory0"].h[:, row], storage.memories[j].h[:, n])  # LSTM: env dim 1


@torch.no_grad()
def test_starts_are_exactly_the_episodes_first_steps(make):
    env, student, storage, carry = setup(make, "transformer")
    gen = torch.Generator().manual_seed(1)
    for rollout in range(2):
        storage.clear()
        env.counters = []
        carry = collect_rollout(env, student, storage, carry, gen)
        fresh = torch.stack(env.counters) == 0  # (T, N) the env's step counter before the step
        if rollout == 0:
            fresh[0] = True  # reset() began every episode (the counters were then desynchronised)
        assert torch.equal(storage.starts, fresh)
        assert torch.equal(storage.starts[1:], storage.dones[:-1].bool())
    assert storage.starts.sum() >= N  # at least one episode began per env


def test_memory_env_dims_follow_each_students_layout(make):
    spec = make("pick_loose", num_envs=1, num_threads=1).obs_spec
    dims = {name: memory_env_dims(build_student(kind, spec, cfg)) for name, (kind, cfg) in STUDENTS.items()}
    assert dims["rnn"] == {"h": 1, "c": 1}
    assert dims["transformer"] == {"tokens": 0, "k": 0, "v": 0, "count": 0}
    assert dims["mlp"] is None


def test_a_missing_memory_is_refused():
    storage = RecurrentRolloutStorage(4, 2, {"policy": 3}, 2, seq_len=2)
    z = torch.zeros(2)
    with pytest.raises(RuntimeError, match="add_memory"):
        storage.add({"policy": torch.zeros(2, 3)}, torch.zeros(2, 2), z, z.bool(), z, z, torch.zeros(2, 2),
                    torch.ones(2, 2))
