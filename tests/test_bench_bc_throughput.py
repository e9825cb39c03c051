"""bench/bc_throughput.py's baseline stays a faithful per-step loop: its loss and gradients equal
forward_sequence's on windows with burn-in and mid-item resets, it calls ``act`` once per step, and
the bench's equality check catches a loop that forgets the resets. No timing here."""

import numpy as np
import pytest
import torch

from bc.data import WindowDataset
from bc.module import BCModule
from bench.bc_throughput import PerStepLoop, check_same_loss, real_share
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
