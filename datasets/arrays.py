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


def read_hidden_flags(store: EpisodeStore, spec: ObsSpec) -> np.ndarray:
    """(T, 2 x objects) float32: each object's ``hidden`` term of the privileged group, its known flag and
    its static flag (columns 0 and 3; in the revealed view both stay 0 until a lift reveals the object).
    What the policy group hides and history can tell: an auxiliary target for a student's memory."""
    terms = [t for t in spec.groups.get("privileged", []) if t.name == "hidden"]
    if not terms:
        raise ConfigError(f"{store.path} has no privileged hidden terms (no objects with hidden properties); "
                          f"set bc.aux_hidden_weight=0")
    cols = [store.read(f"data/obs/privileged/{t.entity}_hidden")[:, [0, 3]] for t in terms]
    return np.concatenate(cols, 1).astype(np.float32)


def first_episodes_of(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The arrays of the first ``n`` episodes."""
    end = int(arrays["ends"][n - 1]) if n else 0
    return {**{k: v[:end] for k, v in arrays.items() if k != "ends"}, "ends": arrays["ends"][:n]}


def concat_policy_arrays(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several stores' arrays as one (episodes in order, the ends shifted): demonstrations plus DAgger's."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(p["action"]) for p in parts[:-1]])
    per_step = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "ends"}  # obs, action, ...
    return {**per_step, "ends": np.concatenate([p["ends"] + off for p, off in zip(parts, offsets)])}
