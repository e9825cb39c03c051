"""bc.aux_hidden_weight: the privileged hidden flags as an auxiliary target beside behaviour cloning
(datasets/arrays.py read_hidden_flags, the "aux" of bc/streams.py's batches, BCModule's aux head)."""

import numpy as np
import pytest
import torch

from bc.data import BCDataModule
from bc.module import BCModule
from bc.streams import StreamDataset
from datasets.store import EpisodeStore
from envs.base import ConfigError, ObsSpec, ObsTerm
from rl.student.model import build_student
from tests.test_bc import dataset  # noqa: F401  (the session fixture: a tiny scripted-expert store)
from tests.test_bc_carry import _late_bit_arrays
from tests.test_student_model import MEMORY_TASK


def test_aux_targets_are_the_store_s_known_and_static_flags_at_each_step(dataset):  # noqa: F811
    store = EpisodeStore.open(dataset)
    spec = ObsSpec.from_dict(store.attrs["obs_spec"])
    dm = BCDataModule(str(dataset), spec, window=8, stride=8, burn_in=0, batch_size=2, val_fraction=0.2, seed=0,
                      memory_start="carry", aux_hidden=True)
    dm.setup()
    cubes = [t.entity for t in spec.groups["privileged"] if t.name == "hidden"]
    assert cubes and dm.aux_dim == 2 * len(cubes)
    flags = np.concatenate([store.read(f"data/obs/privileged/{c}_hidden")[:, [0, 3]] for c in cubes], 1)
    step, _ = dm.train_set.layout(0, 0, 1)
    for c in range(dm.train_set.n_chunks(1)):
        batch = dm.train_set[(0, c, 0, 1)]
        idx = step[:, c * 8:(c + 1) * 8]
        real = idx >= 0
        assert torch.equal(batch["aux"][torch.from_numpy(real)], torch.from_numpy(flags[idx[real]]))
        assert not batch["aux"][torch.from_numpy(~real)].any()
    assert flags[:, 0].any()  # the scripted expert's lifts revealed something: the test compared real flags
    with pytest.raises(ConfigError, match="memory_start=carry or episodes"):
        BCDataModule(str(dataset), spec, 8, 8, 0, 2, 0.2, 0, memory_start="burn_in", aux_hidden=True)


def _spec() -> ObsSpec:
    return ObsSpec({"policy": [ObsTerm("gripper", "pos", 0, 3), ObsTerm("cube0", "pos", 3, 6),
                               ObsTerm("cube1", "pos", 6, 9)]})


def _bit_data(n: int, seed: int, epochs: int = 1) -> StreamDataset:
    """The late-bit episodes (tests/test_bc_carry.py) with one aux target: the bit, at every step."""
    a = _late_bit_arrays(n, 24, 8, seed)
    a["aux"] = (a["obs"].reshape(n, 24, 9)[:, :1, :1] > 0).repeat(24, 1).reshape(n * 24, 1).astype(np.float32)
    return StreamDataset(a, np.arange(n), 8, 24, 0, True, epochs=epochs, pack=True)


def test_the_aux_term_adds_its_weighted_bce_and_stays_out_of_the_student():
    torch.manual_seed(0)
    model = build_student("transformer", _spec(), MEMORY_TASK["transformer"])
    batch = _bit_data(16, 0)[(0, 0, 0, 1)]
    plain = BCModule(model, 1e-3, 0.0, 1, 0.0, burn_in=0, seed=0, memory_start="episodes")
    aux = BCModule(model, 1e-3, 0.0, 1, 0.0, burn_in=0, seed=0, memory_start="episodes", aux_weight=0.5, aux_dim=1)
    base, _ = plain.loss(batch)
    total, info = aux.loss(batch)
    valid = batch["valid"]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        aux.aux_head(model.sequence_features({"policy": batch["policy"], "prev_action": batch["prev_action"]},
                                             batch["reset"])[0])[valid], batch["aux"][valid])
    torch.testing.assert_close(info["aux_bce"], expected.detach())
    torch.testing.assert_close(total, base + 0.5 * expected, atol=1e-5, rtol=1e-5)
    total.backward()
    assert aux.aux_head.weight.grad.abs().sum() > 0
    assert not any("aux" in k for k in model.state_dict())  # student.pt saves the model: no aux head in it


def test_the_aux_target_alone_teaches_the_memory_the_bit():
    """No action depends on the bit here (the actions are noise): only the aux term can make the memory
    keep it, and the aux probe then reads it at the last steps, 16-23 steps after it was shown."""
    torch.manual_seed(0)
    model = build_student("transformer", _spec(), MEMORY_TASK["transformer"])
    module = BCModule(model, 3e-3, 0.0, 1, 0.0, burn_in=0, seed=0, memory_start="episodes", aux_weight=1.0,
                      aux_dim=1)
    data = _bit_data(256, 0, epochs=10)
    data.a["action"][:] = np.random.default_rng(0).normal(size=data.a["action"].shape)  # tells nothing of the bit
    params = [*model.parameters(), *module.aux_head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for epoch in range(10):
        for c in range(data.n_chunks(1)):
            loss, _ = module.loss(data[(epoch, c, 0, 1)])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # as the Trainer clips (bc.grad_clip): noise targets spike
            opt.step()
    model.eval()
    test = _bit_data(64, 1)
    batch = {k: torch.cat([test[(0, c, 0, 1)][k] for c in range(test.n_chunks(1))]) for k in test[(0, 0, 0, 1)]}
    with torch.no_grad():
        logits = module.aux_head(model.sequence_features({"policy": batch["policy"],
                                                          "prev_action": batch["prev_action"]}, batch["reset"])[0])
    late = batch["valid"] & (batch["policy"][..., 0] == 0)  # every step but the one that shows the bit
    late[:, :16] = False  # ... from step 16 of each row's first episode on (rows hold one 24-step episode)
    acc = ((logits[..., 0] > 0) == (batch["aux"][..., 0] > 0))[late].float().mean().item()
    assert acc > 0.95, acc
