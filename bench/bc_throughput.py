"""Behaviour-cloning training throughput: the block-recurrent transformer against a per-step loop of
the same model, the MLP and LSTM students, and the data loader alone.

Data: a real PickLoose-v1 store from the scripted expert (collected into a temp dir through
``pipeline.py stage=collect``, a few seconds), or ``--dataset PATH``; batches from the real
``BCDataModule``, built by stage=bc's own ``bc.stage.data_module`` / ``bc_module``. The base
configuration is pinned (``BASE``: memory_start=burn_in, window 32, burn-in 32, stride 8, batch 64,
no obs_skip: the bc defaults when the first results were recorded), so the rows keep their meaning
when configs/bc/default.yaml changes; ``CARRY`` pins what stage=bc trains by default now.

One training step of every model contender = ``BCModule.loss`` (burn-in under no_grad, then the
window) + backward + gradient clipping (the Trainer's ``bc.grad_clip``) + an AdamW step, on a fixed
pool of batches drawn from the train loader beforehand (so the loader's time is not in the models').

ours:      the transformer, ``forward_sequence`` (block-recurrent: one parallel pass per block of K steps);
baseline:  the same model and weights, ``PerStepLoop``: every step of the burn-in and the window one at a
           time through ``model.act`` with the memory carried and reset at episode starts (the same
           ``BCModule.loss``: the loop only replaces ``forward_sequence``). Its loss and gradients equal
           ours on the same batch (asserted before timing);
mlp, lstm: the baseline students with the bc defaults (the MLP's items carry no burn-in, as in stage=bc);
loader:    batches from the train DataLoader (``bc.num_workers``, default 0) and nothing else.
carry16:   what stage=bc trains by default (``CARRY``: memory_start=carry, 16 streams, window 32,
           obs_skip): the transformer on the chunks of its real carry DataLoader, one whole training
           epoch (chunks 0, 1, ... of epoch 0) per round, in order, the module's carry reset at the
           epoch's start as Lightning's epoch does (``BCModule.on_train_batch_start``), so every chunk
           starts from the memory the previous one really ended with and each round's rate includes
           the epoch's real padding (the streams' ragged ends); its "windows" are stream chunks;
carry64:   the same with 64 streams.
Extra rows: the transformer at batch 256 (four pool batches concatenated), with block 16 and 4, and
with a burn-in of 8 steps (each its own data module; block 16 is timed on the default stride-8
windows, which stage=bc would refuse for it: the cost per window is the same).

Throughput: training samples/s = valid window steps (those in the loss) per second; windows/s beside
it. The contenders are interleaved (a round runs each in turn) and each rate is the median over the
rounds, so load from other jobs on a shared machine hits them all alike.

    python bench/bc_throughput.py [--threads 2] [--rounds 6] [--dataset PATH] [--profile]

Prints a table and, as its last line, one JSON object: ``ours``, ``baseline`` (samples/s), ``ratio``
(ours / baseline), ``mlp``, ``lstm``, ``loader``, ``carry16``, ``carry64`` (and under ``carry``: their
samples/s, ratio to ours and padding share), ``loader_over_ours`` (target >= 5:
``loader_target_met``), ``loader_over_fastest_model``; also written to bench/results/bc_throughput.json.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.distributions import Normal

import pipeline
from bc.data import BCDataModule
from bc.module import BCModule
from bc.stage import bc_module, build, burn_in_steps, data_module
from datasets.store import EpisodeStore
from envs.base import ObsSpec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "bc_throughput.json"
# The configuration the base rows (ours, baseline, mlp, lstm, loader, knobs) were recorded with, pinned:
# the bc defaults of 2026-12-01 (bench/results/bc_throughput_2026-12-01a.json). Knobs change one of them.
BASE = ["bc.memory_start=burn_in", "bc.batch_size=64", "bc.burn_in=32", "bc.window=32", "bc.window_stride=8",
        "bc.transformer.obs_skip=false"]
# What stage=bc trains by default now (configs/bc/default.yaml; the test keeps them equal): truncated BPTT.
CARRY = ["bc.memory_start=carry", "bc.batch_size=16", "bc.window=32", "bc.transformer.obs_skip=true"]
CARRIES = {"carry16": CARRY, "carry64": [*CARRY, "bc.batch_size=64"]}
# Extra rows: the transformer with one setting changed (what speeds training up on few cores?).
KNOBS = {"ours_block16": ["bc.transformer.block=16"], "ours_block4": ["bc.transformer.block=4"],
         "ours_burn_in8": ["bc.burn_in=8"]}


class PerStepLoop(nn.Module):
    """The per-step baseline: ``forward_sequence`` of ``model`` computed by a Python loop over the
    steps through ``model.act``, so ``BCModule.loss`` trains it unchanged. Same weights, same function."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward_sequence(self, obs_seq: dict, starts: torch.Tensor | None = None, memory0=None):
        """obs_seq groups (B, T, D), starts (B, T) bool -> (Normal over (B, T, A), memory after T)."""
        memory = memory0
        T = next(iter(obs_seq.values())).shape[1]
        means, stds = [], []
        for t in range(T):
            if memory is not None and starts is not None:  # None: act starts from a fresh memory
                memory = self.model.reset_memory(memory, starts[:, t])
            dist, memory = self.model.act({k: v[:, t] for k, v in obs_seq.items()}, memory)  # (B, A)
            means.append(dist.mean)
            stds.append(dist.stddev)
        return Normal(torch.stack(means, 1), torch.stack(stds, 1)), memory  # (B, T, A)


def collect_dataset(out_dir: Path, episodes: int) -> Path:
    """A scripted-expert PickLoose-v1 store through the real collect stage (a subprocess, the CLI)."""
    cmd = [sys.executable, str(ROOT / "pipeline.py"), "stage=collect", "env=pick_loose", "teacher=scripted",
           f"collect.num_episodes={episodes}", f"run_dir={out_dir}", "logger.mode=disabled"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out_dir / "dataset.zarr"


def bc_config(*overrides: str):
    with initialize_config_dir(config_dir=pipeline.CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=["env=pick_loose", "logger.mode=disabled", *overrides])


def make_module(path: Path, kind: str, *overrides: str, base: list[str] = BASE) -> tuple[BCModule, BCDataModule]:
    """A student and its data module as stage=bc builds them (bc.stage's own factories), from the bc
    defaults + ``base`` (default ``BASE``) + ``overrides``."""
    cfg = bc_config(f"bc.model={kind}", *base, *overrides)
    store = EpisodeStore.open(path)
    spec = ObsSpec.from_dict(store.attrs["obs_spec"])
    model = build(cfg, spec, int(store.array("data/action").shape[1]))
    burn_in = burn_in_steps(cfg, model)
    dm = data_module(cfg, path, spec, burn_in)
    dm.setup()
    obs, actions = dm.train_steps()
    model.fit_normalizer(torch.from_numpy(obs), torch.from_numpy(actions), init_std_from_actions=True)
    return bc_module(cfg, model, burn_in), dm


def per_step_module(module: BCModule) -> BCModule:
    """``module``'s loss with the model's forward_sequence replaced by the per-step loop (shared weights)."""
    loop = BCModule(PerStepLoop(module.model), module.lr, module.weight_decay, module.warmup_steps,
                    module.mse_weight, module.burn_in, module.seed)
    return loop


def strip_burn_in(batch: dict, burn_in: int) -> dict:
    """The window part of an item (what a burn-in-free student's data module delivers)."""
    return {k: v[:, burn_in:] for k, v in batch.items()}


def real_share(batches: list[dict], burn_in: int) -> float:
    """Share of the computed steps (burn-in + window, every row) that are an episode's real steps, not
    padding: the transformer and the LSTM compute all of them."""
    real = sum(int((b["reset"][:, :burn_in].long().cumsum(1) > 0).sum() + b["valid"][:, burn_in:].sum())
               for b in batches)
    return real / sum(b["valid"].numel() for b in batches)


def concat(batches: list[dict]) -> dict:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


class Trainee:
    """One model contender: a module, its own AdamW, the batches it cycles through; gradients clipped
    to ``grad_clip`` as the Trainer does (``bc.grad_clip``)."""

    def __init__(self, name: str, module: BCModule, batches: list[dict], grad_clip: float):
        self.name, self.module, self.batches = name, module, itertools.cycle(enumerate(batches))
        self.grad_clip, self.pool_size = grad_clip, len(batches)
        self.pool_shape = tuple(batches[0]["valid"].shape)  # (windows or streams, steps)
        self.opt = torch.optim.AdamW(module.parameters(), lr=module.lr, weight_decay=module.weight_decay)
        self.rates: list[tuple[float, float]] = []  # (samples/s, windows/s) per round

    def step(self) -> tuple[int, int]:
        """One optimizer step; returns (valid window steps, windows) it trained on."""
        i, batch = next(self.batches)
        if self.module.carry:  # the pool is one epoch's chunks in order: its start is an epoch's start
            assert self.module.burn_in == 0
            if i == 0:
                self.module.on_train_batch_start(batch, 0)  # as Lightning's epoch: the streams start from no memory
        self.opt.zero_grad(set_to_none=True)
        loss, info = self.module.loss(batch)
        loss.backward()
        nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.opt.step()
        return int(info["n"]), batch["valid"].shape[0]

    def run(self, steps: int) -> None:
        samples = windows = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            n, w = self.step()
            samples, windows = samples + n, windows + w
        dt = time.perf_counter() - t0
        self.rates.append((samples / dt, windows / dt))


class LoaderOnly:
    """The train DataLoader alone, epoch after epoch (a new sampler epoch each time, as Lightning does)."""

    def __init__(self, dm: BCDataModule, burn_in: int):
        self.name, self.loader, self.burn_in = "loader", dm.train_dataloader(), burn_in
        self.it, self.epoch = iter(self.loader), 0
        self.rates: list[tuple[float, float]] = []

    def _next(self) -> dict:
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.loader.sampler.set_epoch(self.epoch)
            self.it = iter(self.loader)
            return next(self.it)

    def run(self, batches: int) -> None:
        samples = windows = 0
        t0 = time.perf_counter()
        for _ in range(batches):
            batch = self._next()
            samples += int(batch["valid"][:, self.burn_in:].sum())
            windows += batch["valid"].shape[0]
        dt = time.perf_counter() - t0
        self.rates.append((samples / dt, windows / dt))


def carry_epoch(dm: BCDataModule) -> list[dict]:
    """Every chunk of training epoch 0 from ``dm``'s real carry DataLoader, in order (chunk c continues
    chunk c-1 in every stream): the pool of a carry contender."""
    assert dm.carry, "carry_epoch needs a data module with memory_start=carry"
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    return list(loader)


def check_same_loss(module: BCModule, batch: dict, atol: float = 1e-4) -> dict:
    """Loss and gradients of forward_sequence and of the per-step loop on one batch: equal or AssertionError."""
    grads = []
    losses = []
    for m in (module, per_step_module(module)):
        m.model.zero_grad(set_to_none=True)
        loss, _ = m.loss(batch)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in module.model.parameters() if p.grad is not None]))
    module.model.zero_grad(set_to_none=True)
    loss_diff = abs(losses[0] - losses[1])
    grad_diff = float((grads[0] - grads[1]).abs().max())
    assert loss_diff <= atol * max(1.0, abs(losses[0])), f"per-step loop loss {losses[1]} != sequence {losses[0]}"
    assert grad_diff <= 10 * atol, f"per-step loop gradients differ from the sequence mode's by {grad_diff}"
    return {"loss_sequence": losses[0], "loss_per_step": losses[1], "abs_loss_diff": loss_diff,
            "max_abs_grad_diff": grad_diff}


def profile_top_ops(trainee: Trainee, steps: int = 3, top: int = 5) -> str:
    """torch.profiler's top ops by self CPU time over a few training steps of ``trainee``."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainee.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, help="an existing PickLoose-v1 store (default: collect one)")
    ap.add_argument("--episodes", type=int, default=128, help="scripted-expert episodes to collect")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds; rates are medians over them")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per model per round")
    ap.add_argument("--loop-steps", type=int, default=1, help="the per-step loop's steps per round (slow)")
    ap.add_argument("--loader-batches", type=int, default=40, help="loader batches per round")
    ap.add_argument("--pool", type=int, default=4, help="batches drawn beforehand and cycled by the models")
    ap.add_argument("--profile", action="store_true", help="print the top ops of ours' training step")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bc_throughput_") as tmp:
        path = args.dataset or collect_dataset(Path(tmp) / "run", args.episodes)
        ours, dm = make_module(path, "transformer")
        burn_in = ours.burn_in
        loader = iter(dm.train_dataloader())
        pool = [next(loader) for _ in range(args.pool)]  # (B, burn_in + window) items
        equal = check_same_loss(ours, pool[0])

        loop = per_step_module(copy.deepcopy(ours))
        mlp, _ = make_module(path, "mlp")
        lstm, _ = make_module(path, "rnn")
        clip = float(bc_config().bc.grad_clip)
        trainees = [Trainee(name, module, batches, clip) for name, module, batches in [
            ("ours", ours, pool), ("baseline", loop, pool), ("mlp", mlp, [strip_burn_in(b, burn_in) for b in pool]),
            ("lstm", lstm, pool), (f"ours_batch{len(pool) * dm.batch_size}", copy.deepcopy(ours), [concat(pool)])]]
        for name, overrides in KNOBS.items():  # the transformer with one bc setting changed
            module, knob_dm = make_module(path, "transformer", *overrides)
            knob_loader = iter(knob_dm.train_dataloader())
            trainees.append(Trainee(name, module, [next(knob_loader) for _ in range(args.pool)], clip))
        # carry: a round = one whole epoch of chunks (Trainee resets the carry at chunk 0), not a sample of
        # steps: a pool of the first chunks would hold no padding (all streams are full at an epoch's start),
        # and cycling a partial pool would carry the memory of its last chunk into its first
        carries, padding = [], {}
        for name, overrides in CARRIES.items():
            module, carry_dm = make_module(path, "transformer", *overrides, base=[])
            carries.append(Trainee(name, module, carry_epoch(carry_dm), clip))
            padding[name] = carry_dm.train_set.padding_share(0)
        n_knobs = len(trainees) - 4
        trainees += carries
        data = LoaderOnly(dm, burn_in)
        store = EpisodeStore.open(path)
        info = {"episodes": store.committed_episodes, "steps": int(store.num_steps),
                "train_windows": len(dm.train_set), "collected": args.dataset is None}

        for t in trainees:  # warm-up: allocator, autograd graph caches, AdamW state
            t.run(t.pool_size if t.module.carry else 1)  # carry: a whole epoch, so each round starts at chunk 0
            t.rates.clear()
        data.run(5)
        data.rates.clear()
        for _ in range(args.rounds):
            for t in trainees:
                t.run(args.loop_steps if t.name == "baseline" else t.pool_size if t.module.carry else args.steps)
            data.run(args.loader_batches)
        top_ops = profile_top_ops(trainees[0]) if args.profile else None

    rate = {c.name: statistics.median(r[0] for r in c.rates) for c in [*trainees, data]}
    windows = {c.name: statistics.median(r[1] for r in c.rates) for c in [*trainees, data]}
    fastest = max(rate[n] for n in ("ours", "mlp", "lstm"))
    print(f"BC training throughput, PickLoose-v1 ({info['episodes']} episodes, {info['train_windows']} train "
          f"windows), window {dm.window} + burn-in {burn_in}, batch {dm.batch_size}, {threads} thread(s), "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'contender':<18}{'samples/s':>12}{'windows/s':>12}{'x baseline':>12}")
    for c in [*trainees, data]:
        print(f"{c.name:<18}{rate[c.name]:>12.0f}{windows[c.name]:>12.1f}{rate[c.name] / rate['baseline']:>12.1f}")
    print(f"per-step loop == forward_sequence: loss diff {equal['abs_loss_diff']:.2e}, "
          f"max grad diff {equal['max_abs_grad_diff']:.2e}")
    print(f"real (non-padding) share of the computed burn-in + window steps: {real_share(pool, burn_in):.0%}")
    for t in carries:
        print(f"{t.name}: {t.pool_shape[0]} streams x {t.pool_size} chunks of {t.pool_shape[1]} steps (epoch 0), "
              f"obs_skip {t.module.model.cfg.obs_skip}: {rate[t.name] / rate['ours']:.2f}x ours; "
              f"padding {padding[t.name]:.0%} of its chunks' steps")
    if top_ops:
        print("top ops of ours' training step (self CPU time):\n" + top_ops)
    result = {
        "bench": "bc_throughput", "env": "PickLoose-v1", "threads": threads, "dataset": info,
        "window": dm.window, "burn_in": burn_in, "batch_size": dm.batch_size, "num_workers": dm.num_workers,
        "rounds": args.rounds, "unit": "training samples/s (valid window steps in the loss per second)",
        "ours": rate["ours"], "baseline": rate["baseline"], "ratio": rate["ours"] / rate["baseline"],
        "mlp": rate["mlp"], "lstm": rate["lstm"], "loader": rate["loader"],
        "loader_over_ours": rate["loader"] / rate["ours"],
        "loader_target_met": rate["loader"] / rate["ours"] >= 5,
        "loader_over_fastest_model": rate["loader"] / fastest,
        "knobs": {t.name: {"samples_per_s": rate[t.name], "over_ours": rate[t.name] / rate["ours"]}
                  for t in trainees[4:4 + n_knobs]},
        **{t.name: rate[t.name] for t in carries},
        "carry": {t.name: {"overrides": CARRIES[t.name], "samples_per_s": rate[t.name],
                           "over_ours": rate[t.name] / rate["ours"], "padding_share": padding[t.name],
                           "chunks_per_epoch": t.pool_size} for t in carries},
        "computed_steps_real_share": real_share(pool, burn_in),
        "mlp_over_baseline": rate["mlp"] / rate["baseline"],
        "windows_per_s": windows, "samples_per_s": rate, "equality_check": equal,
        "bench_seconds": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
