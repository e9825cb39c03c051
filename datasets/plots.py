"""PNG plots of a store: episode lengths, attempts, filter reasons, actions, trajectories."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from datasets.store import EpisodeStore  # noqa: E402

ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "gripper")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def make_plots(store: EpisodeStore, out_dir: Path, n_trajectories: int = 4) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta, rejected = store.episode_meta(), store.rejected()
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].hist(meta["length"], bins=20)
    axes[0].set_title("episode length (steps)")
    counts = np.bincount(meta["n_attempts"]) if len(meta["n_attempts"]) else np.zeros(1)
    axes[1].bar(np.arange(len(counts)), counts)
    axes[1].set_title("attempts per kept episode")
    reasons = store.attrs.get("reject_reasons", [])
    axes[2].bar(reasons, [int((rejected["reason"] == i).sum()) for i in range(len(reasons))])
    axes[2].set_title("filtered episodes by reason")
    axes[2].tick_params(axis="x", rotation=30)
    paths.append(_save(fig, out_dir / "episodes.png"))

    actions = store.read("data/action")
    fig, axes = plt.subplots(1, actions.shape[1], figsize=(3.2 * actions.shape[1], 3))
    for d, ax in enumerate(np.atleast_1d(axes)):
        ax.hist(actions[:, d], bins=50)
        ax.axvline(-1, color="r", lw=0.8)
        ax.axvline(1, color="r", lw=0.8)
        ax.set_title(f"action {ACTION_NAMES[d] if d < len(ACTION_NAMES) else d} (raw; red: env bounds)", fontsize=8)
    paths.append(_save(fig, out_dir / "actions.png"))

    names = store.data_names()
    cube_keys = sorted(n for n in names if n.startswith("obs/privileged/cube") and n.endswith("_pos"))
    if "obs/privileged/gripper_pos" in names and cube_keys:
        retry_first = np.argsort(-meta["n_attempts"], kind="stable")[:n_trajectories]
        fig, axes = plt.subplots(len(retry_first), 1, figsize=(10, 2.6 * len(retry_first)), squeeze=False)
        for ax, i in zip(axes[:, 0], retry_first):
            ep = store.episode(int(i))
            ax.plot(ep["obs/privileged/gripper_pos"][:, 2], label="gripper z", color="k")
            for key in cube_keys:
                ax.plot(ep[key][:, 2], label=key.split("/")[-1].replace("_pos", " z"))
            for t in np.nonzero(np.diff(ep["attempt"]))[0]:
                ax.axvline(t + 1, color="r", ls="--", lw=0.8)
            ax.set_title(f"episode {i}: {int(meta['n_attempts'][i])} attempts (red: a new attempt starts)",
                         fontsize=9)
            ax.legend(fontsize=7, loc="upper left")
        paths.append(_save(fig, out_dir / "trajectories.png"))
    return paths
