"""HDF5 in the robomimic / Isaac Lab Mimic layout: ``python -m datasets.hdf5 export|import SRC DST``.

Export writes (robomimic 0.3.0 trains on it: SequenceDataset, its obs utils and filter keys)::

    data/ attrs: total, env_args (JSON: env_name, type, env_kwargs), retry_imitation* (JSON: our attrs
                 and the layout below, so import restores the store exactly)
    data/demo_<i>/ attrs: num_samples, success, and every per-episode meta field
        actions (T, A)        raw; ``--clip-actions`` clips the exported copy to the env bounds, for
                              tools that refuse actions outside [-1, 1] (robomimic's checks)
        obs/<group>__<entity>_<term> (T, w)   one key per store array data/obs/<group>/<entity>_<term>
        next_obs/<same keys> (T, w)  obs shifted by one step; the last row repeats the last obs
        states (T, S), rewards (T,), dones (T,), and every other data array under its store name
        (attempt, success, perturbation/<kind>, ...)
    mask/train, mask/valid    demo names (bytes): robomimic's hdf5_filter_key split, 90/10
    retry_imitation/rejected/<field> (R,)   meta/rejected (outside data/: robomimic reads every
                                            member of data/ as a demo)

Obs keys: ``<group>__<key>``. robomimic names a torch ``ModuleDict`` entry after each obs key, and
torch refuses names with a '.', which the previous layout (``<group>.<key>``) used; '/' would nest
HDF5 groups. Group names never contain '__' (export refuses them), so the first '__' splits a key
unambiguously; import also reads the key map stored in the file.

Import reads such files back (ours round-trip exactly: every array, per-episode field, rejection
and attr), files of the previous layout (``<group>.<key>`` obs, no key map), and robomimic's and
Isaac Lab's recorder files: their ``obs/<key>`` (or a flat ``obs`` array) becomes the ``policy``
group, 2-D ``states`` become ``sim_state``, missing rewards and attempts become zeros. Existing
destinations are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np

from datasets.store import REJECT_REASONS, EpisodeStore
from envs.base import ConfigError

OURS = "retry_imitation"
SEP = "__"  # <group>__<entity>_<term>; see the module docstring
# robomimic's EnvType (robomimic/envs/env_base.py): ROBOSUITE_TYPE=1, GYM_TYPE=2, IG_MOMART_TYPE=3.
# Ours is none of them. GYM is the honest one: our tasks are gym-style batched envs, and robomimic's
# rollout would fail loudly at gym.make(env_name). ROBOSUITE would be a lie with a cost: robosuite
# has its own "Lift", and robomimic would roll our policy out on that other task without a word.
ROBOMIMIC_GYM_TYPE = 2
VALID_RATIO = 0.1  # robomimic's split_train_val.py default
# Store arrays with robomimic's own names; every other data array keeps its store name.
RENAMED = {"action": "actions", "sim_state": "states", "reward": "rewards"}


def _hdf5_name(store_name: str) -> str:
    """Where a data/<store_name> array lives inside a demo group."""
    if store_name.startswith("obs/"):
        group, key = store_name[4:].split("/", 1)
        return f"obs/{group}{SEP}{key}"
    return RENAMED.get(store_name, store_name)


def train_valid_split(names: list[str]) -> tuple[list[str], list[str]]:
    """robomimic's split_train_val.py (its default ratio, np.random.seed(0)): the same mask it writes."""
    demos = sorted(names)
    mask = np.zeros(len(demos))
    mask[: int(VALID_RATIO * len(demos))] = 1.0
    np.random.RandomState(0).shuffle(mask)
    return [d for d, m in zip(demos, mask) if not m], [d for d, m in zip(demos, mask) if m]


def export(src, dst, clip_actions: bool = False) -> int:
    store = EpisodeStore.open(src)
    dst = Path(dst)
    if dst.exists():
        raise ConfigError(f"{dst} already exists; choose another output path (nothing was written)")
    names = store.data_names()
    bad = [n for n in names if n.startswith("obs/") and SEP in n.split("/")[1]]
    if bad:
        raise ConfigError(f"observation group names may not contain '{SEP}' (the HDF5 key separator): {bad}; "
                          f"rename the group in the env config")
    layout = {name: _hdf5_name(name) for name in names}
    attrs = store.attrs
    lo, hi = attrs.get("action_bounds", [-1.0, 1.0])
    meta = store.episode_meta()
    tmp = dst.with_suffix(dst.suffix + ".partial")
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = store.num_steps
        data.attrs["env_args"] = json.dumps({"env_name": attrs.get("env"), "type": ROBOMIMIC_GYM_TYPE,
                                             "env_kwargs": attrs.get("env_cfg", {})})
        data.attrs[OURS] = json.dumps(attrs, default=str)
        data.attrs[OURS + "_arrays"] = json.dumps(layout)
        data.attrs[OURS + "_episode_dtypes"] = json.dumps({k: v.dtype.str for k, v in meta.items()})
        demos = []
        for i in range(store.num_episodes):
            ep = store.episode(i)
            T = len(ep["action"])
            demo = data.create_group(f"demo_{i}")
            demos.append(demo.name.rsplit("/", 1)[1])
            demo.attrs["num_samples"] = T
            demo.attrs["success"] = bool(ep["success"][-1])
            for name, values in meta.items():
                demo.attrs[name] = values[i].item()
            for name, path in layout.items():
                values = np.clip(ep[name], lo, hi) if clip_actions and name == "action" else ep[name]
                demo.create_dataset(path, data=values)
                if name.startswith("obs/"):
                    # robomimic's s' (its default config loads it). The store has no observation after
                    # the last step, so the last row repeats it; dones[-1] is 1, so no bootstrapped
                    # target reads it.
                    demo.create_dataset("next_obs/" + path[4:], data=np.concatenate([values[1:], values[-1:]]))
            dones = np.zeros(T, np.int64)
            dones[-1] = 1
            demo.create_dataset("dones", data=dones)
        train, valid = train_valid_split(demos)
        f.create_dataset("mask/train", data=np.array(train, dtype="S"))
        f.create_dataset("mask/valid", data=np.array(valid, dtype="S"))
        for name, values in store.rejected().items():
            f.create_dataset(f"{OURS}/rejected/{name}", data=values)
    tmp.replace(dst)
    return store.num_episodes


def _demo_names(data: h5py.Group) -> list[str]:
    names = [k for k in data.keys() if k.startswith("demo_")]
    return sorted(names, key=lambda k: int(k.split("_", 1)[1]) if k.split("_", 1)[1].isdigit() else k)


def _episode_from_demo(demo: h5py.Group) -> dict[str, np.ndarray]:
    """A demo of a file without our array map: the previous layout of ours, robomimic's, Isaac Lab's."""
    actions = np.asarray(demo["actions"], dtype=np.float32)
    T = len(actions)
    ep: dict[str, np.ndarray] = {"action": actions}
    obs = demo.get("obs")
    if isinstance(obs, h5py.Dataset):  # Isaac Lab recorder: one flat policy array
        ep["obs/policy/obs"] = np.asarray(obs, np.float32).reshape(T, -1)
    elif obs is not None:
        for key in obs:
            group, name = key.split(".", 1) if "." in key else ("policy", key)
            ep[f"obs/{group}/{name}"] = np.asarray(obs[key], np.float32).reshape(T, -1)
    states = demo.get("states")
    if isinstance(states, h5py.Dataset) and states.ndim == 2:
        ep["sim_state"] = np.asarray(states, np.float64)
    ep["reward"] = np.asarray(demo["rewards"], np.float32) if "rewards" in demo else np.zeros(T, np.float32)
    ep["attempt"] = np.asarray(demo["attempt"], np.int16) if "attempt" in demo else np.zeros(T, np.int16)
    if "success" in demo:
        ep["success"] = np.asarray(demo["success"], bool)
    else:
        ep["success"] = np.zeros(T, bool)
        ep["success"][-1] = bool(demo.attrs.get("success", True))
    return ep


def _mapped_episode(demo: h5py.Group, arrays: dict[str, str]) -> dict[str, np.ndarray]:
    """A demo of a file with our array map: every store array, with the dtype it was written with."""
    missing = [path for path in arrays.values() if path not in demo]
    if missing:
        raise ConfigError(f"{demo.file.filename}:{demo.name} lacks {missing}; the file is incomplete, re-export it")
    return {name: demo[path][()] for name, path in arrays.items()}


def _rejections(f: h5py.File, reasons: list[str]) -> list[dict]:
    """meta/rejected records of our file (reason codes back to names: the store re-encodes them)."""
    group = f.get(f"{OURS}/rejected")
    if group is None:
        return []
    columns = {name: group[name][()] for name in group}
    n = len(columns["reason"])
    return [{name: (reasons[int(v[r])] if name == "reason" else v[r]) for name, v in columns.items()}
            for r in range(n)]


def import_(src, dst) -> int:
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise ConfigError(f"{src} does not exist")
    if dst.exists():
        raise ConfigError(f"{dst} already exists; choose another output path (nothing was written)")
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise ConfigError(f"{src} is not a readable HDF5 file ({exc})") from exc
    with f:
        if "data" not in f or not _demo_names(f["data"]):
            raise ConfigError(f"{src} has no data/demo_* groups; it is not a robomimic / Isaac Lab demo file")
        data = f["data"]
        ours = json.loads(data.attrs[OURS]) if OURS in data.attrs else None
        arrays = json.loads(data.attrs[OURS + "_arrays"]) if OURS + "_arrays" in data.attrs else None
        names = _demo_names(data)

        def read(demo):
            return _mapped_episode(demo, arrays) if arrays is not None else _episode_from_demo(demo)

        first = read(data[names[0]])
        layout = {k: (v.shape[1:], str(v.dtype)) for k, v in first.items()}
        rejected = []
        if ours is not None:
            # the store sets schema_version and reject_reasons itself; every other attr comes back as it was
            attrs = {k: v for k, v in ours.items() if k not in ("schema_version", "reject_reasons")}
            meta_fields = json.loads(data.attrs[OURS + "_episode_dtypes"])
            rejected = _rejections(f, ours.get("reject_reasons", list(REJECT_REASONS)))
        else:
            env_args = json.loads(data.attrs.get("env_args", "{}") or "{}")
            attrs = {"env": env_args.get("env_name", "unknown"), "env_cfg": env_args.get("env_kwargs", {}),
                     "teacher": "imported", "imported_from": str(src)}
            meta_fields = {"seed": "uint64", "length": "int64", "n_attempts": "int64", "return": "float32"}
        store = EpisodeStore.create(dst, attrs, layout, meta_fields)
        for name in names:
            demo = data[name]
            ep = read(demo)
            if set(ep) != set(layout):
                raise ConfigError(f"{src}:{name} has arrays {sorted(ep)}, the first demo has {sorted(layout)}")
            if ours is not None:
                meta = {k: demo.attrs[k] for k in meta_fields}
            else:
                meta = {"seed": int(demo.attrs.get("seed", 0)), "length": len(ep["action"]),
                        "n_attempts": int(ep["attempt"].max()) + 1, "return": float(ep["reward"].sum())}
            store.append_episode(ep, meta)
        for record in rejected:
            store.append_rejected(record)
        store.flush()
    return len(names)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="zarr store -> HDF5")
    e.add_argument("src")
    e.add_argument("dst")
    e.add_argument("--clip-actions", action="store_true", help="clip the exported actions to the env bounds")
    i = sub.add_parser("import", help="HDF5 -> zarr store")
    i.add_argument("src")
    i.add_argument("dst")
    a = p.parse_args(argv)
    try:
        n = export(a.src, a.dst, a.clip_actions) if a.cmd == "export" else import_(a.src, a.dst)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"{a.cmd}ed {n} episodes: {a.src} -> {a.dst}")


if __name__ == "__main__":
    main()
