"""Training curves from ``metrics.jsonl``: ``python -m rl.plot RUN_DIR [--stage teacher] [--out DIR]``.

Writes ``<stage>_training.png`` (success, return, episode length, losses, KL, clip fraction,
learning rate, entropy and action spread, explained variance, Var(R), throughput, and with the
teacher's curriculum the success of fresh and expert starts and the frontier, with its selection
the deterministic success at each evaluation) and
``<stage>_gradients.png`` (per-layer gradient L2 and max norms) so a user without wandb sees the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("success_rate", "success rate"), ("mean_return", "mean episode return"),
    ("mean_episode_length", "mean episode length"), ("value_loss", "value loss"),
    ("policy_loss", "policy loss"), ("imitation_loss", "imitation term (bc_coef x MSE to the expert)"),
    ("explained_variance", "explained variance"),
    ("kl", "KL(old || new)"), ("clip_fraction", "clip fraction"), ("learning_rate", "learning rate"),
    (("policy_std", "action_std", "action_mean_spread"), "policy std / action spread"),
    ("entropy", "entropy"), ("returns_var", "Var(R)"), ("env_steps_per_s", "env steps / s"),
    ("actions_outside_bounds", "share of actions outside [-1, 1]"),
    ("bounds_loss", "mean beyond the bounds: sum relu(|mu| - 1)^2 (teacher.ppo.bounds_coef)"),
    (("fresh_success_rate", "expert_start_success_rate", "band_success_rate"), "curriculum: success by start"),
    ("curriculum_frontier", "curriculum frontier (steps to go)"),
    (("selection_success_rate", "selected_success_rate"), "selection: deterministic success (fresh starts)"),
]


def load(path: Path, stage: str) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; train first (python pipeline.py stage=teacher ...)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("stage") == stage and "iteration" in r]


def plot(rows: list[dict], out_dir: Path, stage: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    x = [r["env_steps"] for r in rows]
    def ran(key):  # the curriculum's, selection's and imitation term's panels only when they ran
        return any(r.get(key) for r in rows) if key == "imitation_loss" else any(key in r for r in rows)

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

    layers = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("grad_l2/")})
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for kind, ax in zip(("grad_l2", "grad_max"), axes):
        for layer in layers:
            ax.semilogy(x, [r.get(f"{kind}/{layer}", float("nan")) for r in rows], label=layer)
        ax.set_title(f"per-layer gradient {'L2' if kind == 'grad_l2' else 'max (inf)'} norm")
        ax.set_xlabel("env steps")
    axes[1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    grads = out_dir / f"{stage}_gradients.png"
    fig.savefig(grads, dpi=80)
    plt.close(fig)
    return [curves, grads]


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
