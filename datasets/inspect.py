"""Inspect a store.

``python -m datasets.inspect PATH [--json] [--episodes] [--plots DIR] [--video EP --out FILE] [--verify]``.

The summary: episodes, steps, success, attempts histogram, share with retries, filter reasons,
how retries differed from the failed attempt before them, action statistics (including the share
outside the env's bounds), and every array's shape, dtype, chunks, compression and size.
``--json`` prints the same as one JSON object; ``--episodes`` adds a per-episode table; ``--plots``
writes PNGs; ``--video`` renders an episode from its stored states; ``--verify`` replays every
episode's actions from its first state and reports the drift against the stored states.
Exit code 2 with one line for a missing, corrupt (a chunk that fails its checksum or is truncated)
or other-schema store.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from datasets.store import EpisodeStore
from datasets.summary import summarize
from envs.base import ConfigError


def array_info(store: EpisodeStore) -> list[dict]:
    rows = []
    for prefix in ("data", "meta"):
        for name, arr in store._arrays(prefix):
            compressors = getattr(arr, "compressors", ()) or ()
            rows.append({"name": f"{prefix}/{name}", "shape": list(arr.shape), "dtype": str(arr.dtype),
                         "chunks": list(arr.chunks),
                         "compressor": ", ".join(type(c).__name__ for c in compressors) or "none",
                         "stored_bytes": int(arr.nbytes_stored()) if hasattr(arr, "nbytes_stored") else None})
    return rows


def action_stats(store: EpisodeStore) -> dict:
    actions = store.read("data/action")
    lo, hi = store.attrs.get("action_bounds", [-1.0, 1.0])
    if len(actions) == 0:
        return {"mean": [], "std": [], "outside_bounds_share": 0.0}
    a = actions.astype(np.float64)
    return {"mean": a.mean(0).round(3).tolist(), "std": a.std(0).round(3).tolist(),
            "min": a.min(0).round(3).tolist(), "max": a.max(0).round(3).tolist(),
            "outside_bounds_share": float(((actions < lo) | (actions > hi)).mean())}


def summary(store: EpisodeStore) -> dict:
    s = summarize(store)
    success = store.read("data/success")
    ends = store.episode_ends
    ended_in_success = bool(all(success[e - 1] for e in ends)) if len(ends) else True
    return {**s, "schema_version": store.attrs.get("schema_version"), "env": store.attrs.get("env"),
            "teacher": store.attrs.get("teacher"), "code_version": store.attrs.get("code_version"),
            "created_at": store.attrs.get("created_at"), "all_kept_succeed": ended_in_success,
            "actions": action_stats(store), "arrays": array_info(store)}


def episode_rows(store: EpisodeStore) -> list[dict]:
    meta = store.episode_meta()
    return [{"episode": i, "length": int(meta["length"][i]), "attempts": int(meta["n_attempts"][i]),
             "return": float(meta["return"][i]), "seed": int(meta["seed"][i]), "drops": int(meta["drops"][i]),
             "pushes": int(meta["pushes"][i])} for i in range(store.num_episodes)]


def print_summary(info: dict, episodes: list[dict] | None) -> None:
    console = Console(width=None if sys.stdout.isatty() else 140)
    head = Table(title=f"{info['env']} demonstrations (schema {info['schema_version']}, teacher {info['teacher']})")
    head.add_column("quantity")
    head.add_column("value")
    head.add_row("episodes / steps", f"{info['episodes']} / {info['steps']}")
    head.add_row("all kept episodes succeed", str(info["all_kept_succeed"]))
    head.add_row("attempts histogram", ", ".join(f"{k}: {v}" for k, v in info["attempts_histogram"].items()))
    head.add_row("share with a failed attempt", f"{info['with_retry_share']:.1%}")
    head.add_row("retries that changed cube / mean yaw change",
                 f"{info['retries_changed_cube_share']:.1%} / {info['retries_mean_yaw_change']:.2f} rad")
    head.add_row("rejected", ", ".join(f"{k}: {v}" for k, v in info["rejected"].items() if v) or "none")
    head.add_row("actions mean / std", f"{info['actions'].get('mean')} / {info['actions'].get('std')}")
    head.add_row("actions outside env bounds", f"{info['actions']['outside_bounds_share']:.1%}")
    console.print(head)
    arrays = Table(title="arrays")
    for col in ("name", "shape", "dtype", "chunks", "compressor", "stored"):
        arrays.add_column(col)
    for a in info["arrays"]:
        size = a["stored_bytes"]
        arrays.add_row(a["name"], str(tuple(a["shape"])), a["dtype"], str(tuple(a["chunks"])), a["compressor"],
                       "?" if size is None else f"{size / 1024:.1f} KiB")
    console.print(arrays)
    if episodes is not None:
        t = Table(title="episodes")
        for col in ("episode", "length", "attempts", "return", "seed", "drops", "pushes"):
            t.add_column(col)
        for e in episodes:
            t.add_row(*(f"{e[c]:.2f}" if isinstance(e[c], float) else str(e[c]) for c in
                        ("episode", "length", "attempts", "return", "seed", "drops", "pushes")))
        console.print(t)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--episodes", action="store_true", help="add a per-episode table")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots to DIR")
    p.add_argument("--video", type=int, metavar="EP", help="render episode EP (needs --out)")
    p.add_argument("--out", type=Path, help="video file (.mp4 or .gif)")
    p.add_argument("--verify", action="store_true", help="replay every episode and report the drift")
    a = p.parse_args(argv)
    try:
        store = EpisodeStore.open(a.path)
        if a.video is not None and a.out is None:
            raise ConfigError("--video needs --out FILE.mp4 (or .gif)")
        info = {**summary(store), **_actions(store, a)}  # every read inside: a corrupt chunk is one line
        episodes = episode_rows(store) if a.episodes else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if not a.json:
        for key in ("plots", "video", "verify"):
            if key in info:
                print(f"{key}: {info[key]}")
    if a.json:
        print(json.dumps({**info, **({"episode_table": episodes} if episodes is not None else {})}, default=_plain))
    else:
        print_summary(info, episodes)


def _actions(store: EpisodeStore, a) -> dict:
    """Run the optional --plots / --video / --verify actions; their results join the summary."""
    extra: dict = {}
    if a.plots is not None:
        from datasets.plots import make_plots

        extra["plots"] = [str(p) for p in make_plots(store, a.plots)]
    if a.video is not None:
        from datasets.replay import render_episode

        try:
            extra["video"] = {"path": str(a.out), "frames": render_episode(store, a.video, a.out)}
        except RuntimeError as exc:  # RenderUnavailable: no GL backend
            raise ConfigError(str(exc)) from exc
    if a.verify:
        from datasets.replay import verify

        extra["verify"] = verify(store)
    return extra


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x))


if __name__ == "__main__":
    main()
