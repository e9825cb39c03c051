"""BC curves from ``metrics.jsonl`` to ``plots/bc_training.png`` and ``plots/bc_gradients.png``."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
    ("samples_per_s", "training windows / s"),
]


def _rows(path: Path) -> list[dict]:
    return [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip())
            if r.get("stage") == "bc" and "iteration" in r]


def plot_bc(metrics: Path, out_dir: Path) -> list[Path]:
    rows = _rows(metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def draw(panels, name, logy=False):
        panels = [(k if isinstance(k, tuple) else (k,), t) for k, t in panels]
        panels = [(k, t) for k, t in panels if any(key in r for r in rows for key in k)]
        if not panels:
            return
        n_rows = -(-len(panels) // 4)
        fig, axes = plt.subplots(n_rows, 4, figsize=(16, 3 * n_rows), squeeze=False)
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

    draw(PANELS, "bc_training.png")
    grad_keys = sorted({k for r in rows for k in r if k.startswith(("grad_l2/", "grad_max/"))})
    draw([(k, k) for k in grad_keys], "bc_gradients.png", logy=True)
    return written
