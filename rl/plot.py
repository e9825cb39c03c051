"""Training curves from ``metrics.jsonl``: ``python -m rl.plot RUN_DIR [--stage teacher] [--out DIR]``.

Writes ``<stage>_training.png`` (success, return, episode length, losses, KL, clip fraction,
learning rate, entropy and action spread, explained variance, Var(R), throughput, and with the
teacher's curriculum the success of fresh and expert starts and the frontier, with its selection
the deterministic success at each evaluation; with fine-tuning's demo-state resets and groups their
shares, success by start and group spread) and ``<stage>_gradients.png`` (per-layer gradient L2 and max
norms; a student's per-parameter norms summed per module, ``gradient_groups``), so a user without wandb
sees the run. Rows with a student's internals (rl/student/diagnostics.py: residual ratios, attention
entropies, memory norm) also give ``<stage>_internals.png`` (bc's and fine-tuning's).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("success_rate", "success rate"), ("mean_return", "mean episode return"),
    ("mean_episode_length", "mean episode length"), ("value_loss", "value loss"),
    ("policy_loss", "policy loss"), ("imitation_loss", "imitation term (bc_coef x MSE to the expert)"),
    ("teacher_loss", "teacher term (coef x MSE)"),
    ("teacher_gap", "gap to the teacher's labels (MSE)"),
    ("explained_variance", "explained variance"),
    ("kl", "KL(old || new)"), ("clip_fraction", "clip fraction"), ("learning_rate", "learning rate"),
    (("policy_std", "action_std", "action_mean_spread"), "policy std / action spread"),
    ("entropy", "entropy"), ("returns_var", "Var(R)"), ("env_steps_per_s", "env steps / s"),
    ("actions_outside_bounds", "share of actions outside [-1, 1]"),
    ("bounds_loss", "mean beyond the bounds: sum relu(|mu| - 1)^2 (teacher.ppo.bounds_coef)"),
    # the teacher's curriculum (expert states, band) and fine-tuning's demo-state resets
    (("fresh_success_rate", "expert_start_success_rate", "band_success_rate", "demo_start_success_rate"),
     "success by start (fresh / expert or demo state)"),
    ("curriculum_frontier", "curriculum frontier (steps to go)"),
    (("selection_success_rate", "selected_success_rate"), "selection: deterministic success (fresh starts)"),
    # fine-tuning (finetune/demo_reset.py, rl/group_advantage.py)
    (("demo_start_share", "demo_start_after_failure_share"), "demo-state resets: share of resets"),
    ("valid_fraction", "group rollouts: share of steps before each env's first done"),
    ("group_return_std", "group rollouts: std of the episode return within a group"),
]


def load(path: Path, stage: str) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; train first (python pipeline.py stage=teacher ...)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("stage") == stage and "iteration" in r]


def plot(rows: list[dict], out_dir: Path, stage: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    x = [r["env_steps"] for r in rows]
    def ran(key):  # the curriculum's, selection's and imitation terms' panels only when they ran
        if key in ("imitation_loss", "teacher_loss"):  # logged as 0 when off
            return any(r.get(key) for r in rows)
        return any(key in r for r in rows)

    panels = [(keys, title) for keys, title in PANELS if any(map(ran, keys if isinstance(keys, tuple) else (keys,)))]
    n_rows = -(-len(panels) // 4)
    fig, axes = plt.subplots(n_rows, 4, figsize=(16, 3 * n_rows), squeeze=False)
    for ax, (keys, title) in zip(axes.flat, panels):
        for key in (keys if isinstance(keys, tuple) else (keys,)):
            points = [(xv, r[key]) for xv, r in zip(x, rows) if key in r]
            # metrics logged only on some iterations (the selection's evaluations) get markers
            ax.plot(*zip(*points), "o-" if len(points) < len(rows) else "-", label=key, markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("env steps", fontsize=8)
        if keys == "learning_rate":
            ax.set_yscale("log")  # the warm-up's 1e-3 would flatten the PPO phase's 1e-6..1e-5 to zero
        if isinstance(keys, tuple):
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{stage}: PPO diagnostics")
    fig.tight_layout()
    curves = out_dir / f"{stage}_training.png"
    fig.savefig(curves, dpi=80)
    plt.close(fig)

    grads = _plot_gradients(rows, x, out_dir / f"{stage}_gradients.png")
    written = [curves, grads]
    panels = internal_panels({k for r in rows for k in r})
    if panels:
        written.append(_plot_internals(rows, x, panels, out_dir / f"{stage}_internals.png", stage))
    return written


def gradient_groups(names: list[str]) -> dict[str, list[str]]:
    """Parameter names -> the curves of the gradients plot: {curve: its parameters}.

    A policy with a student (``student.*``, fine-tuning) has too many parameters for a readable plot:
    each transformer layer ``student.layers.<i>``, every other submodule of the student
    (``student.tokenizer``, ``student.head``, ...) and each top-level module (``critic``) is one curve, and
    the student's own parameters (its embeddings) one more, ``student.(own)``. Without one (the
    teacher) every parameter keeps its own curve, as logged."""
    if not any(n.startswith("student.") for n in names):
        return {n: [n] for n in names}
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        if parts[0] != "student":
            key = parts[0] if len(parts) > 1 else name
        elif len(parts) == 2:
            key = "student.(own)"
        elif parts[1] == "layers" and len(parts) > 3:
            key = ".".join(parts[:3])
        else:
            key = ".".join(parts[:2])
        groups.setdefault(key, []).append(name)
    return groups


def _group_norm(row: dict, kind: str, params: list[str]) -> float:
    """The group's norm from its parameters' logged norms: L2 = sqrt(sum of squares), max = max."""
    values = [row[f"{kind}/{p}"] for p in params if f"{kind}/{p}" in row]
    if len(values) < 2:
        return values[0] if values else float("nan")  # one parameter: its logged norm, as it was
    return math.sqrt(sum(v * v for v in values)) if kind == "grad_l2" else max(values)


def _plot_gradients(rows: list[dict], x: list, path: Path) -> Path:
    names = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith(("grad_l2/", "grad_max/"))})
    groups = gradient_groups(names)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for kind, ax in zip(("grad_l2", "grad_max"), axes):
        for curve, params in groups.items():
            ax.semilogy(x, [_group_norm(r, kind, params) for r in rows], label=curve)
        ax.set_title(f"per-layer gradient {'L2' if kind == 'grad_l2' else 'max (inf)'} norm")
        ax.set_xlabel("env steps")
    axes[1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def internal_panels(keys: set[str]) -> list[tuple[tuple[str, ...], str]]:
    """The panels of ``<stage>_internals.png`` (bc's and fine-tuning's) from the logged keys: residual ratios
    per layer (a panel per branch), attention entropy per head (a panel per layer), memory norm (mean, max),
    the gated memory's half-life (median, longest width)."""
    panels = []
    for branch in ("attn", "mlp"):
        layers = tuple(sorted(k for k in keys if k.startswith(f"resid_{branch}/")))
        if layers:
            panels.append((layers, f"residual ratio ||{branch} branch|| / ||stream|| per layer (0: branch off)"))
    entropy: dict[str, list[str]] = {}
    for k in sorted(k for k in keys if k.startswith("attn_entropy/")):
        entropy.setdefault(k.rsplit("/", 1)[0], []).append(k)  # attn_entropy/<layer>/head<h> by layer
    panels += [(tuple(heads), f"attention entropy per head, {layer.split('/', 1)[1]} (nats; log n: uniform)")
               for layer, heads in entropy.items()]
    memory = tuple(k for k in ("memory_norm", "memory_norm_max") if k in keys)
    if memory:
        panels.append((memory, "carried memory L2 norm per token (mean, max)"))
    half_life = tuple(k for k in ("memory_half_life_median", "memory_half_life_max") if k in keys)
    if half_life:
        panels.append((half_life, "memory half-life per width, steps (median, longest)"))
    return panels


def _plot_internals(rows: list[dict], x: list, panels: list, path: Path, stage: str, per_row: int = 3) -> Path:
    n_rows = -(-len(panels) // per_row)
    fig, axes = plt.subplots(n_rows, per_row, figsize=(4 * per_row, 3 * n_rows), squeeze=False)
    for ax, (keys, title) in zip(axes.flat, panels):
        for key in keys:
            points = [(xv, r[key]) for xv, r in zip(x, rows) if key in r]  # measured every diag_every iterations
            ax.plot(*zip(*points), "o-" if len(points) < 30 else "-", label=key, markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("env steps", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{stage}: the student's internals")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--stage", default="teacher")
    p.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/plots")
    a = p.parse_args()
    try:
        rows = load(a.run_dir / "metrics.jsonl", a.stage)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if not rows:
        print(f"error: {a.run_dir / 'metrics.jsonl'} has no training iterations for stage {a.stage!r}", file=sys.stderr)
        sys.exit(2)
    for path in plot(rows, a.out or a.run_dir / "plots", a.stage):
        print(path)


if __name__ == "__main__":
    main()
