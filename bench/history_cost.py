"""Per-step inference cost of the history student against transformers that read the whole history.

ours:      HistoryTransformer.act (step mode): memory tokens + a KV cache of the current block (<= K
           steps); the latency of one step, averaged over two whole blocks (so the block-end memory
           write is included) starting at step 8 and at step 1000 of one episode.
baseline:  full recompute: the same layers (same width, depth, tokens per step) run over every past
           step's tokens again at each step, causal attention (token-causal, PyTorch's fused kernel:
           the cheapest way to do it). Its cost grows with t^2; batch 64 is measured up to 256 steps
           and its step-1000 value is a quadratic fit through the measured points (said in the JSON),
           batch 1 is measured at 1000 directly.
kv_full:   a KV cache over the whole history: per step the new tokens attend to every past token
           (a cache of t steps; its cost depends on the cache's size only, so a random one is timed).

    python bench/history_cost.py [--threads 1] [--repeats 3]

Prints a table and, as its last line, one JSON object: ``ours`` (ms per step at step 1000, batch 64),
``baseline`` (full recompute at step 1000, batch 64), ``ratio`` (ours at 1000 / ours at 10, batch 64).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from envs.mujoco.observations import ObservationManager
from rl.student.model import HistoryConfig, HistoryTransformer

ROOT = Path(__file__).resolve().parents[1]


def policy_spec(env: str):
    cfg = yaml.safe_load((ROOT / "configs" / "env" / f"{env}.yaml").read_text())
    return ObservationManager(cfg["observations"], cfg["n_cubes"], cfg["n_stack"] > 0).spec


@torch.no_grad()
def ours_per_step(model, batch: int, last: int, repeats: int) -> tuple[dict[int, float], dict[int, float]]:
    """ms per step averaged over steps [s, s + 2K) for s in (8, last), best of ``repeats`` episodes:
    (wall clock, process CPU time). The CPU time is the steadier on a machine shared with others."""
    K, D = model.cfg.block, model.spec.dim(model.cfg.group)
    wall: dict[int, list[float]] = {8: [], last: []}
    cpu: dict[int, list[float]] = {8: [], last: []}
    for _ in range(repeats):
        memory = model.initial_memory(batch)
        obs = {"policy": torch.randn(batch, D)}
        times, cpus = [], []
        for _ in range(last + 2 * K):
            t0, c0 = time.perf_counter(), time.process_time()
            _, memory = model.act(obs, memory)
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        assert memory.k.shape[-2] == model.cfg.n_memory + K * model.S  # the cache is the block's, whatever the step
        for s, acc in wall.items():
            acc.append(1e3 * statistics.fmean(times[s:s + 2 * K]))
            cpu[s].append(1e3 * statistics.fmean(cpus[s:s + 2 * K]))
    return {s: min(v) for s, v in wall.items()}, {s: min(v) for s, v in cpu.items()}


def _layer_causal(layer, x):
    """One of our layers over a whole sequence with causal attention (the full-recompute baseline)."""
    B, N, D = x.shape
    a = layer.attn
    q, k, v = a.qkv(layer.ln1(x)).view(B, N, 3, a.n_heads, a.head_dim).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(a.q_norm(q), a.k_norm(k), v, is_causal=True)
    x = x + a.proj(y.transpose(1, 2).reshape(B, N, D))
    return x + layer.out(F.gelu(layer.fc(layer.ln2(x))))


@torch.no_grad()
def full_recompute(model, batch: int, steps: int, repeats: int) -> float:
    """ms for one step at history length ``steps``: all steps' tokens through the layers again."""
    tokens = torch.randn(batch, steps * model.S, model.cfg.d_model)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = tokens
        for layer in model.virtual_layers:
            x = _layer_causal(layer, x)
        model.head(model.ln_f(x[:, -1]), model.norm)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


@torch.no_grad()
def kv_full_history(model, batch: int, steps: int, repeats: int) -> float:
    """ms for one step with a KV cache of ``steps`` past steps."""
    cfg, S = model.cfg, model.S
    H, Dh = cfg.n_heads, cfg.d_model // cfg.n_heads
    # Preallocated with room for this step's tokens, written in place: no copy of the history per step.
    caches = [(torch.randn(batch, H, (steps + 1) * S, Dh), torch.randn(batch, H, (steps + 1) * S, Dh))
              for _ in model.virtual_layers]
    x0 = torch.randn(batch, S, cfg.d_model)

    def store(k_own, v_own, k, v):
        k[:, :, -S:], v[:, :, -S:] = k_own, v_own
        return k, v
    best = float("inf")
    for _ in range(repeats * 5):
        t0 = time.perf_counter()
        x = x0
        for layer, (k, v) in zip(model.virtual_layers, caches, strict=True):
            x = layer(x, lambda k_own, v_own, k=k, v=v: store(k_own, v_own, k, v), None)
        model.head(model.ln_f(x[:, -1]), model.norm)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="stack_pick_multi")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--last", type=int, default=1000)
    ap.add_argument("--full-steps", type=int, nargs="+", default=[16, 64, 128, 256])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = policy_spec(args.env)
    cfg = HistoryConfig(init="default")  # the default student's shape; init only changes values
    model = HistoryTransformer(spec, cfg).eval()
    last = args.last

    measured = {b: ours_per_step(model, b, last, args.repeats) for b in (64, 1)}
    ours, ours_cpu = {b: m[0] for b, m in measured.items()}, {b: m[1] for b, m in measured.items()}
    full = {64: {t: full_recompute(model, 64, t, args.repeats) for t in args.full_steps},
            1: {t: full_recompute(model, 1, t, args.repeats) for t in sorted({*args.full_steps, 10, last})}}
    full[64][10] = full_recompute(model, 64, 10, args.repeats)
    ts = np.array(sorted(full[64]), dtype=float)
    fit = np.polyfit(ts, [full[64][int(t)] for t in ts], 2)  # a + b t + c t^2: attention's t^2 and the rest
    full64_last = float(np.polyval(fit, last))
    kv = {b: {t: kv_full_history(model, b, t, args.repeats) for t in (10, last)} for b in (64, 1)}

    print(f"history cost per step, {args.env} ({model.S} tokens/step), d_model={cfg.d_model} layers={cfg.n_layers} "
          f"M={cfg.n_memory} K={cfg.block} P={cfg.passes}, {args.threads} thread(s); ms per step")
    print(f"{'method':<34}{'batch':>6}{'step 10':>12}{f'step {last}':>14}")
    for b in (64, 1):
        print(f"{'ours (memory + block KV cache)':<34}{b:>6}{ours[b][8]:>12.3f}{ours[b][last]:>14.3f}")
        print(f"{'KV cache over the whole history':<34}{b:>6}{kv[b][10]:>12.3f}{kv[b][last]:>14.3f}")
        f_last = f"{full64_last:.1f} (fit)" if b == 64 else f"{full[1][last]:.1f}"
        print(f"{'full recompute':<34}{b:>6}{full[b][10]:>12.3f}{f_last:>14}")
    print(f"ours, process CPU time: batch 64 {ours_cpu[64][8]:.3f} -> {ours_cpu[64][last]:.3f} ms, "
          f"batch 1 {ours_cpu[1][8]:.3f} -> {ours_cpu[1][last]:.3f} ms")
    measured = ", ".join(f"{t} steps {full[64][t]:.1f} ms" for t in sorted(full[64]))
    print("full recompute, batch 64, measured: " + measured)
    result = {
        "bench": "history_cost", "env": args.env, "threads": args.threads, "tokens_per_step": model.S,
        "config": {k: getattr(cfg, k) for k in ("d_model", "n_heads", "n_layers", "n_memory", "block", "passes")},
        "ours": ours[64][last], "baseline": full64_last, "ratio": ours[64][last] / ours[64][8],
        "baseline_extrapolated_from_steps": sorted(full[64]),
        "ratio_batch1": ours[1][last] / ours[1][8],
        "ratio_cpu_time": ours_cpu[64][last] / ours_cpu[64][8],
        "ratio_cpu_time_batch1": ours_cpu[1][last] / ours_cpu[1][8],
        "ours_cpu_ms": {str(b): {"10": ours_cpu[b][8], str(last): ours_cpu[b][last]} for b in ours_cpu},
        "ours_ms": {str(b): {"10": ours[b][8], str(last): ours[b][last]} for b in ours},
        "full_recompute_ms": {"64": {str(t): v for t, v in sorted(full[64].items())} | {f"{last}_fit": full64_last},
                              "1": {str(t): v for t, v in sorted(full[1].items())}},
        "kv_full_history_ms": {str(b): {str(t): v for t, v in kv[b].items()} for b in kv},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
