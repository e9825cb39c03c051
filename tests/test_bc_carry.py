"""bc.memory_start=carry (bc/streams.py, BCModule's carried memory): the streams and their chunks,
the carried memory against one long pass, a tiny stage run that learns and resumes exactly."""

import json

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from bc.module import BCModule
from bc.streams import ChunkSampler, StreamDataset
from rl.student.head import bc_loss
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
