"""BC curves from ``metrics.jsonl`` to ``plots/bc_training.png``, ``plots/bc_gradients.png`` and
``plots/bc_internals.png`` (the model's internals, rl/student/diagnostics.py, in the panels of
rl.plot.internal_panels, which fine-tuning's plot shares: residual ratios, a panel per branch; attention
entropies, a panel per layer; the memory norm). What a run did not log (an MLP student has no internals
to show) is left out; a file with no panel at all is not written."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rl.plot import internal_panels  # noqa: E402  (shared with fine-tuning's internals plot)

PANELS = [
    (("train_loss", "val_loss"), "loss (NLL of raw actions [+ MSE])"),
    (("train_mse", "val_mse"), "MSE of the mean"),
    (("closed_loop_success_rate", "closed_loop_selected_success_rate"), "closed-loop success (held-out seeds)"),
    ("closed_loop_mean_reward", "closed-loop mean reward"),
    ("closed_loop_mean_episode_length", "closed-loop episode length"),
    ("closed_loop_mean_attempts_to_success", "closed-loop attempts to success"),
    (("train_action_spread", "train_std_mean"), "action spread (batch std of the mean) / policy std"),
    ("grad_l2", "gradient L2 norm (before clipping)"),
    ("lr", "learning rate"),
    ("samples_per_s", "training samples (steps in the loss) / s, evaluations included"),
]


def _rows(path: Path, stage: str) -> list[dict]:
    return [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip())
            if r.get("stage") == stage and "iteration" in r]


def plot_bc(metrics: Path, out_dir: Path, stage: str = "bc") -> list[Path]:
    """``stage``: the rows' stage, ``bc`` or a baseline's (``bc_mlp``): also the files' prefix."""
    rows = _rows(metrics, stage)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def draw(panels, name, logy=False, per_row=4):
        panels = [(k if isinstance(k, tuple) else (k,), t) for k, t in panels]
        panels = [(k, t) for k, t in panels if any(key in r for r in rows for key in k)]
        if not panels:
            return
        n_rows = -(-len(panels) // per_row)
        fig, axes = plt.subplots(n_rows, per_row, figsize=(4 * per_row, 3 * n_rows), squeeze=False)
        for ax, (keys, title) in zip(axes.flat, panels):
            for key in keys:
                pts = [(r["iteration"], r[key]) for r in rows if key in r and r[key] == r[key]]
                if pts:
                    ax.plot(*zip(*pts), "o-" if len(pts) < 30 else "-", label=key, markersize=3)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("optimizer steps", fontsize=8)
            if logy:
                ax.set_yscale("log")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)

    draw(PANELS, f"{stage}_training.png")
    grad_keys = sorted({k for r in rows for k in r if k.startswith(("grad_l2/", "grad_max/"))})
    draw([(k, k) for k in grad_keys], f"{stage}_gradients.png", logy=True)
    draw(internal_panels({k for r in rows for k in r}), f"{stage}_internals.png", per_row=3)
    return written

