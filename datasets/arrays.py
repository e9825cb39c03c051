"""The arrays a policy learns from, read in place from a zarr store: one obs group, the raw actions,
the perturbation flags and the episode ends.

Shared by behaviour cloning (bc/data.py) and the fine-tuning stage's imitation term
(rl/demo_sequences.py), which must not import each other: both read the same columns in the same order.
"""

from __future__ import annotations

import numpy as np

from datasets.store import EpisodeStore
from envs.base import ConfigError, ObsSpec


def read_policy_arrays(store: EpisodeStore, spec: ObsSpec, group: str = "policy") -> dict[str, np.ndarray]:
    """obs (T, D) float32 in the spec's column order, action (T, A), perturbed (T,) bool, ends (E,)."""
    cols = []
    for term in spec.groups[group]:
        name = f"data/obs/{group}/{term.entity}_{term.name}"
        values = store.read(name)
        if values.shape[1:] != (term.end - term.start,):
            raise ConfigError(f"{store.path}: {name} has shape {values.shape}, the obs spec says width "
                              f"{term.end - term.start}; re-collect the dataset")
        cols.append(values.astype(np.float32))
    names = store.data_names()
    flags = [store.read(f"data/{n}").astype(bool) for n in names if n.startswith("perturbation/")]
    steps = store.num_steps
    return {"obs": np.concatenate(cols, 1), "action": store.read("data/action").astype(np.float32),
            "perturbed": np.any(flags, 0) if flags else np.zeros(steps, bool), "ends": store.episode_ends}


def first_episodes_of(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The arrays of the first ``n`` episodes."""
    end = int(arrays["ends"][n - 1]) if n else 0
    return {"obs": arrays["obs"][:end], "action": arrays["action"][:end], "perturbed": arrays["perturbed"][:end],
            "ends": arrays["ends"][:n]}


def concat_policy_arrays(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several stores' arrays as one (episodes in order, the ends shifted): demonstrations plus DAgger's."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(p["action"]) for p in parts[:-1]])
    return {"obs": np.concatenate([p["obs"] for p in parts]), "action": np.concatenate([p["action"] for p in parts]),
            "perturbed": np.concatenate([p["perturbed"] for p in parts]),
            "ends": np.concatenate([p["ends"] + off for p, off in zip(parts, offsets)])}
