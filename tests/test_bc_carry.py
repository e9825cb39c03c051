"""bc.memory_start=carry (bc/streams.py, BCModule's carried memory): the streams and their chunks,
the carried memory against one long pass, a tiny stage run that learns and resumes exactly."""

import json

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from bc.module import BCModule
from bc.streams import ChunkSampler, StreamDataset, pack
from envs.base import ObsSpec, ObsTerm
from rl.student.head import bc_loss
from rl.student.model import build_student
from tests.test_bc import dataset, make_cfg, synthetic  # noqa: F401  (dataset: the session fixture)
from tests.test_student_model import make

LENGTHS = [5, 7, 18, 1, 9, 7, 13, 4, 11]
TRAIN = np.array([0, 2, 3, 4, 5, 6, 7, 8])  # episode 1 held out: its steps must never appear


def epoch_of(data: StreamDataset, epoch: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """All chunks of an epoch joined along time: (streams, n_chunks * window, ...)."""
    chunks = [data[(epoch, c, rank, world)] for c in range(data.n_chunks(world))]
    return {k: torch.cat([c[k] for c in chunks], 1) for k in chunks[0]}


def stream_episodes(full: dict) -> list[list[int]]:
    """The episode ids of each stream, in stream order (synthetic: obs[..., 0] is the episode id)."""
    return [[int(e) for e in row_obs[row_start, 0]] for row_obs, row_start in zip(full["policy"], full["starts"])]


def test_streams_hold_every_training_step_once_in_episode_order_with_starts_and_prev_action():
    a = synthetic(np.cumsum(LENGTHS))
    data = StreamDataset(a, TRAIN, streams=3, window=4, seed=0, shuffle=True, epochs=4)
    ends = a["ends"]
    begins = np.concatenate([[0], ends[:-1]])
    train_rows = sorted(int(i) for e in TRAIN for i in range(begins[e], ends[e]))
    counts, last_chunk_used = set(), []
    for epoch in range(4):
        full = epoch_of(data, epoch)
        real, starts = full["valid"], full["starts"]  # no perturbed mask: valid = a real step
        g = full["action"][..., 0]  # the global step index of each real step
        assert sorted(g[real].long().tolist()) == train_rows  # every training step once, nothing else
        for row in range(3):
            n = int(real[row].sum())
            assert real[row, :n].all() and not real[row, n:].any()  # padding only after the stream's end
            t = full["policy"][row, :n, 1]  # step within the episode
            assert torch.equal(starts[row, :n], t == 0) and not starts[row, n:].any()
            inner = ~starts[row, :n]
            assert (t[1:][inner[1:]] == t[:-1][inner[1:]] + 1).all()  # whole episodes, consecutive steps
            assert (g[row, 1:n][inner[1:]] == g[row, :n - 1][inner[1:]] + 1).all()
        assert torch.equal(full["reset"], starts)
        prev = full["prev_action"][..., 0]
        assert (prev[real & ~starts] == g[real & ~starts] - 1).all() and (prev[starts] == 0).all()
        boundary = real[:, ::4] & ~starts[:, ::4]  # a chunk's first step that continues an episode
        assert boundary[:, 1:].any()  # so prev_action across a chunk boundary was checked above
        dealt = stream_episodes(full)
        running, taken = [0] * 3, [0] * 3  # replay the deal in the epoch's permutation order
        for e in TRAIN[data.order(epoch)]:
            s = next(i for i, eps in enumerate(dealt) if e in eps)
            assert dealt[s][taken[s]] == e and running[s] == min(running)  # next in its stream, the shortest
            running[s], taken[s] = running[s] + LENGTHS[e], taken[s] + 1
        counts.add(len(ChunkSampler(data)))
        assert real.shape[1] == data.n_chunks(1) * 4
        last_chunk_used.append(bool(real[:, -4:].any()))
    assert counts == {data.n_chunks(1)}
    assert any(last_chunk_used)  # sized by the longest stream of the deals: no chunk is padding in every epoch
    again = StreamDataset(a, TRAIN, streams=3, window=4, seed=0, shuffle=True, epochs=4)
    assert stream_episodes(epoch_of(again, 1)) == stream_episodes(epoch_of(data, 1))  # same (seed, epoch)
    assert stream_episodes(epoch_of(data, 0)) != stream_episodes(epoch_of(data, 1))  # a new epoch: new deal
    other_seed = StreamDataset(a, TRAIN, streams=3, window=4, seed=1, shuffle=True, epochs=4)
    assert stream_episodes(epoch_of(other_seed, 1)) != stream_episodes(epoch_of(data, 1))
    val = StreamDataset(a, TRAIN, streams=3, window=4, seed=0, shuffle=False)
    assert stream_episodes(epoch_of(val, 0)) == stream_episodes(epoch_of(val, 5))  # validation: fixed order


def test_perturbed_steps_mask_leaves_them_out_of_valid_only():
    a = synthetic(np.cumsum(LENGTHS))
    keep = epoch_of(StreamDataset(a, TRAIN, 3, 4, 0, True, epochs=3), 2)
    mask = epoch_of(StreamDataset(a, TRAIN, 3, 4, 0, True, mask_perturbed=True, epochs=3), 2)
    perturbed = keep["valid"] & (keep["policy"][..., 1] % 5 == 3)  # synthetic: t % 5 == 3
    assert perturbed.any() and torch.equal(mask["valid"], keep["valid"] & ~perturbed)
    assert torch.equal(mask["action"], keep["action"]) and torch.equal(mask["starts"], keep["starts"])


def test_ddp_rank_r_takes_streams_r_of_world_times_batch_streams():
    a = synthetic(np.cumsum(LENGTHS))
    one = epoch_of(StreamDataset(a, TRAIN, 4, 4, 0, True, epochs=4), 3)  # one process, 4 streams
    shared = StreamDataset(a, TRAIN, 2, 4, 0, True, epochs=4)  # 2 processes of 2 streams
    assert shared.n_chunks(2) == StreamDataset(a, TRAIN, 4, 4, 0, True, epochs=4).n_chunks(1)
    for rank in range(2):
        part = epoch_of(shared, 3, rank, 2)
        for k, v in part.items():
            assert torch.equal(v, one[k][rank::2]), k


def carry_batches(model, lengths, streams: int, window: int) -> list[dict]:
    """Chunks of random episodes laid in streams, with observations of ``model``'s width."""
    a = synthetic(np.cumsum(lengths))
    g = np.random.default_rng(0)
    a["obs"] = g.normal(size=(len(a["obs"]), model.spec.dim("policy"))).astype(np.float32)
    a["action"] = g.normal(size=(len(a["obs"]), 5)).astype(np.float32)
    data = StreamDataset(a, np.arange(len(lengths)), streams, window, seed=0, shuffle=True)
    return [data[(0, c, 0, 1)] for c in range(data.n_chunks(1))]


@pytest.mark.parametrize("name", ["transformer", "rnn"])
@torch.no_grad()
def test_the_carried_memory_gives_the_losses_of_one_pass_over_each_whole_stream(name):
    model = make(name)  # eval mode, block 4: window 6 cuts blocks mid-way
    window = 6
    batches = carry_batches(model, [9, 14, 3, 17, 6, 11, 8], streams=3, window=window)
    full = {k: torch.cat([b[k] for b in batches], 1) for k in batches[0]}
    dist, _ = model.forward_sequence({"policy": full["policy"], "prev_action": full["prev_action"]}, full["starts"])
    module = BCModule(model, 1e-3, 0.0, 1, 0.0, burn_in=0, seed=0, memory_start="carry")
    broken = BCModule(model, 1e-3, 0.0, 1, 0.0, burn_in=0, seed=0, memory_start="carry")
    gaps = []
    for c, batch in enumerate(batches):
        cols = slice(c * window, (c + 1) * window)
        expected, _ = bc_loss(Normal(dist.mean[:, cols], dist.stddev[:, cols]), full["action"][:, cols],
                              full["valid"][:, cols])
        loss, _ = module.loss(batch)
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
        broken._carry.clear()  # a carry that forgets: each chunk from the initial memory
        gaps.append(float((broken.loss(batch)[0] - expected).abs()))
    assert max(gaps) > 1e-3, gaps


def test_the_carried_memory_is_detached_and_each_loop_starts_from_none():
    model = make("transformer").train()
    module = BCModule(model, 1e-3, 0.0, 1, 0.0, burn_in=0, seed=0, memory_start="carry")
    batches = carry_batches(model, [9, 14, 3, 17], streams=2, window=6)
    module.loss(batches[0])
    assert all(not t.requires_grad for t in vars(module._carry["train"]).values())  # truncated BPTT
    module.loss(batches[0], "val")
    assert module._carry_in["val"] is None  # validation's memory is its own, not training's
    module.on_validation_epoch_start()
    assert "val" not in module._carry and "train" in module._carry


@pytest.fixture(scope="module")
def carry_runs(tmp_path_factory, dataset):  # noqa: F811
    """A tiny carry run of 4 epochs straight, and the same killed after 2 and resumed. Window 6 is no
    multiple of the block (4): carry accepts it."""
    from bc.stage import run
    root = tmp_path_factory.mktemp("bc_carry")
    common = [f"bc.dataset={dataset}", "bc.memory_start=carry", "bc.epochs=4", "bc.eval_every=2", "bc.window=6",
              "bc.batch_size=4", "bc.lr=0.003", "bc.transformer.prev_action=dropout"]
    run(make_cfg(root / "straight", *common))
    run(make_cfg(root / "resumed", *common), _stop_after_epochs=2)
    assert not (root / "resumed" / "student.pt").exists()
    run(make_cfg(root / "resumed", *common, "bc.resume=true"))
    return root


def test_a_carry_stage_run_learns_and_records_memory_start(carry_runs):
    rows = [json.loads(x) for x in (carry_runs / "straight" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) > 20 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses  # an NLL: 1 nat lower
    ckpt = torch.load(carry_runs / "straight" / "student.pt", weights_only=True)
    assert ckpt["bc_cfg"]["memory_start"] == "carry"


def test_exact_resume_in_carry_mode_equals_the_uninterrupted_run(carry_runs):
    a = torch.load(carry_runs / "straight" / "student.pt", weights_only=True)
    b = torch.load(carry_runs / "resumed" / "student.pt", weights_only=True)
    for key, value in a["last_state_dict"].items():
        torch.testing.assert_close(b["last_state_dict"][key], value, atol=1e-6, rtol=1e-5)
    assert [h["success_rate"] for h in a["selection"]] == [h["success_rate"] for h in b["selection"]]


def test_a_batch_of_padding_only_writes_no_train_numbers():
    """An epoch's last carry chunks can be padding in every stream (the chunk count is the run's longest
    deal): their loss of 0 measures nothing, so MetricsWriter leaves the train numbers out of that row."""
    from types import SimpleNamespace

    from bc.callbacks import MetricsWriter

    class Log:
        rows = []

        def log(self, m, step):
            self.rows.append(m)

    metrics = {"train_loss": torch.tensor(0.0), "lr": torch.tensor(1e-3)}
    trainer = SimpleNamespace(global_step=10, world_size=1, is_global_zero=True, current_epoch=0,
                              callback_metrics=metrics)
    writer = MetricsWriter(Log(), None, every=10)
    module = SimpleNamespace(burn_in=0, grad_stats={"grad_l2": 0.0})
    for valid in (torch.zeros(2, 6, dtype=torch.bool), torch.ones(2, 6, dtype=torch.bool)):
        writer.on_train_batch_end(trainer, module, None, {"valid": valid}, 0)
    assert len(Log.rows) == 1 and Log.rows[0]["train_loss"] == 0.0  # only the real batch's row


# bc.memory_start=episodes: whole episodes packed into rows of window steps (bc/streams.py pack)


def test_packing_keeps_each_episode_whole_at_a_row_start_and_every_step_once():
    a = synthetic(np.cumsum(LENGTHS))
    window = 20  # the longest training episode is 18
    data = StreamDataset(a, TRAIN, streams=2, window=window, seed=0, shuffle=True, epochs=4, pack=True)
    ends = a["ends"]
    begins = np.concatenate([[0], ends[:-1]])
    train_rows = sorted(int(i) for e in TRAIN for i in range(begins[e], ends[e]))
    n_steps, layouts = len(train_rows), set()
    for epoch in range(4):
        full = epoch_of(data, epoch)
        real, starts, g = full["valid"], full["starts"], full["action"][..., 0]
        assert sorted(g[real].long().tolist()) == train_rows  # every training step once, nothing else
        t = full["policy"][..., 1]  # step within the episode
        assert torch.equal(starts, real & (t == 0))
        for row in range(2):
            for c in range(data.n_chunks(1)):
                cols = slice(c * window, (c + 1) * window)
                r, s = real[row, cols], starts[row, cols]
                n = int(r.sum())
                assert r[:n].all() and not r[n:].any()  # a row: episodes, then padding
                assert n == 0 or s[0]  # every non-empty row begins at an episode's start: nothing is cut
                ep = full["policy"][row, cols, 0][:n]
                for e in ep.unique():  # each episode of the row whole: its steps 0..len-1 in order
                    assert torch.equal(t[row, cols][:n][ep == e], torch.arange(LENGTHS[int(e)]).float())
        assert full["valid"].numel() >= n_steps
        layouts.add(tuple(g[real].long().tolist()))
    assert len(layouts) == 4  # each epoch packs its own permutation
    # the same batches for 2 processes of 1 stream as for one process of 2 (DDP's global batch)
    shared = StreamDataset(a, TRAIN, 1, window, 0, True, epochs=4, pack=True)
    assert shared.n_chunks(2) == data.n_chunks(1)
    one = epoch_of(data, 3)
    for rank in range(2):
        for k, v in epoch_of(shared, 3, rank, 2).items():
            assert torch.equal(v, one[k][rank::2]), k


def test_best_fit_packing_fills_rows_tighter_than_one_episode_per_row():
    lengths = np.random.default_rng(0).integers(40, 300, size=500)  # StackPickMulti-like episode lengths
    rows = pack(lengths, np.random.default_rng(1).permutation(500), 304)
    assert sorted(e for r in rows for e in r) == list(range(500))
    assert all(lengths[r].sum() <= 304 for r in rows)
    assert lengths.sum() / (304 * len(rows)) > 0.85  # one episode per row: 0.56
    with pytest.raises(ValueError, match="does not fit"):
        pack(np.array([10, 305]), np.arange(2), 304)


def test_episodes_mode_refuses_a_window_shorter_than_an_episode(dataset):  # noqa: F811
    from bc.data import BCDataModule
    from datasets.store import EpisodeStore
    from envs.base import ConfigError
    spec = ObsSpec.from_dict(EpisodeStore.open(dataset).attrs["obs_spec"])
    dm = BCDataModule(str(dataset), spec, window=4, stride=4, burn_in=0, batch_size=2, val_fraction=0.2, seed=0,
                      memory_start="episodes")
    with pytest.raises(ConfigError, match=r"bc.window=\d+ or more"):
        dm.setup()


def _late_bit_arrays(n: int, T: int, late: int, seed: int) -> dict:
    """n episodes of T steps: a bit (+-1) in obs column 0 at step 0 only; the action is the bit on the
    first and the last ``late`` steps, 0 between (early: read it; late: remember it)."""
    g = np.random.default_rng(seed)
    bit = g.integers(0, 2, n) * 2.0 - 1.0
    obs = 0.1 * g.normal(size=(n, T, 9))
    obs[:, :, 0] = 0.0
    obs[:, 0, 0] = bit
    action = np.zeros((n, T, 5))
    action[:, :late, :] = action[:, T - late:, :] = bit[:, None, None]
    return {"obs": obs.reshape(n * T, 9).astype(np.float32), "action": action.reshape(n * T, 5).astype(np.float32),
            "perturbed": np.zeros(n * T, bool), "ends": np.arange(1, n + 1) * T}


@pytest.mark.parametrize("memory_start, window", [("carry", 8), ("episodes", 24)])
def test_whole_episode_packing_teaches_a_memory_that_carried_chunks_cannot(memory_start, window):
    """The bit is needed 16-23 steps after it was shown. Carried 8-step chunks (truncated BPTT) never
    send that loss's gradient back to step 0: at chance. Whole episodes (episodes mode): learnt."""
    from tests.test_student_model import MEMORY_TASK
    T, late = 24, 8
    spec = ObsSpec({"policy": [ObsTerm("gripper", "pos", 0, 3), ObsTerm("cube0", "pos", 3, 6),
                               ObsTerm("cube1", "pos", 6, 9)]})
    torch.manual_seed(0)
    model = build_student("transformer", spec, MEMORY_TASK["transformer"])
    module = BCModule(model, 3e-3, 0.0, 1, 1.0, burn_in=0, seed=0, memory_start=memory_start)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = StreamDataset(_late_bit_arrays(256, T, late, 0), np.arange(256), 8, window, 0, True, epochs=10,
                         pack=memory_start == "episodes")
    model.train()
    for epoch in range(10):  # whole episodes: at 1.0 from epoch 8 on (at chance at 6); carry at chance at 12 too
        module._carry.clear()
        for c in range(data.n_chunks(1)):
            loss, _ = module.loss(data[(epoch, c, 0, 1)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test = _late_bit_arrays(256, T, late, 1)
    obs = torch.from_numpy(test["obs"]).view(256, T, 9)
    starts = torch.zeros(256, T, dtype=torch.bool)
    starts[:, 0] = True
    with torch.no_grad():
        mean = model.forward_sequence({"policy": obs, "prev_action": torch.zeros(256, T, 5)}, starts)[0].mean
    bit = torch.from_numpy(test["action"]).view(256, T, 5)[:, -1, 0]
    acc = ((mean[:, T - late:, 0] > 0) == (bit[:, None] > 0)).float().mean().item()
    if memory_start == "carry":
        assert acc < 0.7, acc
    else:
        assert acc > 0.95, acc
