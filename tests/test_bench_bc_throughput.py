"""bench/bc_throughput.py's baseline stays a faithful per-step loop: its loss and gradients equal
forward_sequence's on windows with burn-in and mid-item resets, it calls ``act`` once per step, and
the bench's equality check catches a loop that forgets the resets; its contenders are built by
bc.stage's factories with the configurations they are named for. No timing here."""

import numpy as np
import pytest
import torch

import bench.bc_throughput as bench
from bc.data import WindowDataset
from bc.module import BCModule
from bc.streams import StreamDataset
from bench.bc_throughput import CARRY, PerStepLoop, Trainee, check_same_loss, make_module, real_share
from tests.test_bc import dataset  # noqa: F401  (the session fixture: a tiny scripted-expert store)
from tests.test_student_model import make, policy_spec

BURN_IN, WINDOW = 8, 8


def batch_and_module(name: str) -> tuple[dict, BCModule]:
    spec = policy_spec()
    rng = np.random.default_rng(0)
    ends = np.array([5, 17, 47, 60])  # short and long episodes: left padding, resets inside the burn-in
    arrays = {"obs": rng.normal(size=(60, spec.dim("policy"))).astype(np.float32),
              "action": rng.normal(size=(60, 5)).astype(np.float32), "perturbed": np.zeros(60, bool), "ends": ends}
    data = WindowDataset(arrays, np.arange(len(ends)), WINDOW, 4, BURN_IN)
    items = [data[i] for i in range(len(data))]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}  # (N, BURN_IN + WINDOW, ...)
    model = make(name, spec).train()
    return batch, BCModule(model, 1e-3, 0.0, 1, 0.1, BURN_IN, 0)


@pytest.mark.parametrize("name", ["transformer", "transformer_p2_norm_prev"])
def test_the_per_step_loop_gives_the_loss_and_gradients_of_forward_sequence(name):
    batch, module = batch_and_module(name)
    assert bool(batch["reset"][:, 1:].any()), "the batch must hold resets after its first step"
    calls = []
    act = module.model.act
    module.model.act = lambda obs, memory=None: (calls.append(1), act(obs, memory))[1]
    result = check_same_loss(module, batch)
    assert len(calls) == BURN_IN + WINDOW  # one act call per step: a loop, not one sequence call
    assert result["abs_loss_diff"] <= 1e-4 and result["max_abs_grad_diff"] <= 1e-3
    loop_dist, _ = PerStepLoop(module.model).forward_sequence(
        {"policy": batch["policy"], "prev_action": batch["prev_action"]}, batch["reset"])
    seq_dist, _ = module.model.forward_sequence(
        {"policy": batch["policy"], "prev_action": batch["prev_action"]}, batch["reset"])
    torch.testing.assert_close(loop_dist.mean, seq_dist.mean, atol=1e-5, rtol=1e-4)  # (N, T, A)


def test_the_equality_check_catches_a_loop_that_ignores_episode_starts(monkeypatch):
    batch, module = batch_and_module("transformer")
    right = PerStepLoop.forward_sequence
    monkeypatch.setattr(PerStepLoop, "forward_sequence",
                        lambda self, obs, starts=None, memory0=None: right(self, obs, None, memory0))
    with pytest.raises(AssertionError, match="per-step loop"):
        check_same_loss(module, batch)


def test_real_share_counts_burn_in_and_window_steps_that_exist():
    batch, _ = batch_and_module("transformer")
    share = real_share([batch], BURN_IN)
    assert 0 < share < 1  # the short episodes pad their items
    full = {k: v.clone() for k, v in batch.items()}
    full["reset"][:] = False
    full["reset"][:, 0] = True
    full["valid"][:] = True
    assert real_share([full], BURN_IN) == 1.0


# The bench's modules come from bc.stage's own factories, with its pinned configurations: a check that
# fails if they drift from what they say they measure (the bc defaults moved under the bench once).

def test_the_base_contenders_are_burn_in_windows_of_the_pinned_configuration(dataset):  # noqa: F811
    module, dm = make_module(dataset, "transformer")
    assert not module.carry and module.burn_in == 32 and not module.model.cfg.obs_skip
    assert not dm.carry and isinstance(dm.train_set, WindowDataset)
    assert (dm.batch_size, dm.window, dm.stride, dm.burn_in) == (64, 32, 8, 32)
    assert dm.train_set[0]["valid"].shape == (32 + 32,)  # burn-in + window steps per item
    mlp, mlp_dm = make_module(dataset, "mlp")
    assert mlp.burn_in == 0 and mlp_dm.train_set[0]["valid"].shape == (32,)
    _, few = make_module(dataset, "transformer", "bc.num_episodes=6", "bc.epochs=3")
    assert (few.num_episodes, few.epochs, len(few.arrays["ends"])) == (6, 3, 6)  # every stage argument reaches it


def test_carry_pins_the_current_bc_defaults():
    b = bench.bc_config().bc
    defaults = [f"bc.memory_start={b.memory_start}", f"bc.batch_size={b.batch_size}", f"bc.window={b.window}",
                f"bc.transformer.obs_skip={str(b.transformer.obs_skip).lower()}"]
    assert CARRY == defaults, "configs/bc/default.yaml changed: update CARRY and rerun bench/bc_throughput.py"


def test_the_carry_contender_trains_one_epoch_of_real_chunks_and_restarts_its_memory_at_its_start(dataset):  # noqa: F811
    module, dm = make_module(dataset, "transformer", *CARRY, base=[])
    assert module.carry and module.burn_in == 0 and module.model.cfg.obs_skip and dm.batch_size == 16
    module, dm = make_module(dataset, "transformer", *CARRY, "bc.batch_size=2", base=[])  # the tiny store: 2 streams
    assert isinstance(dm.train_set, StreamDataset) and dm.epochs == bench.bc_config().bc.epochs  # the run's deals
    chunks = bench.carry_epoch(dm)
    assert len(chunks) == dm.train_set.n_chunks(1) >= 2
    assert all(c["valid"].shape == (2, 32) for c in chunks)
    starts = torch.cat([c["reset"] for c in chunks], 1)  # (streams, epoch): each stream's episodes end to end
    assert bool(starts[dm.train_set.layout(0, 0, 1)[0][:, 0] >= 0, 0].all())
    trainee = Trainee("carry2", module, chunks, 1.0)
    for _ in range(len(chunks)):
        trainee.step()
    assert module._carry_in["train"] is not None  # the last chunk continued the previous one
    n, streams = trainee.step()  # the pool's start again: an epoch's start, from no memory
    assert module._carry_in["train"] is None and streams == 2 and n == int(chunks[0]["valid"].sum())
