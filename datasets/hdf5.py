"""HDF5 in the robomimic / Isaac Lab Mimic layout: ``python -m datasets.hdf5 export|import SRC DST``.

Export writes::

    data/ attrs: total, env_args (JSON: env_name, type, env_kwargs), retry_imitation (JSON: our attrs)
    data/demo_<i>/ attrs: num_samples, success, seed, and every per-episode meta field
        actions (T, A)        raw; ``--clip-actions`` clips the exported copy to the env bounds, for
                              tools that refuse actions outside [-1, 1] (robomimic's checks)
        obs/<group>.<entity>_<term> (T, w)
        states (T, S), rewards (T,), dones (T,), attempt (T,), success (T,)

Import reads such files back (ours round-trip exactly) and also robomimic's and Isaac Lab's recorder
files: their ``obs/<key>`` (or a flat ``obs`` array) becomes the ``policy`` group, 2-D ``states``
become ``sim_state``, missing rewards and attempts become zeros. Existing destinations are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np

from datasets.store import EpisodeStore
from envs.base import ConfigError

OURS = "retry_imitation"


def export(src, dst, clip_actions: bool = False) -> int:
    store = EpisodeStore.open(src)
    dst = Path(dst)
    if dst.exists():
        raise ConfigError(f"{dst} already exists; choose another output path (nothing was written)")
    attrs = store.attrs
    lo, hi = attrs.get("action_bounds", [-1.0, 1.0])
    meta = store.episode_meta()
    tmp = dst.with_suffix(dst.suffix + ".partial")
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = store.num_steps
        data.attrs["env_args"] = json.dumps({"env_name": attrs.get("env"), "type": "retry_imitation_mujoco",
                                             "env_kwargs": attrs.get("env_cfg", {})})
        data.attrs[OURS] = json.dumps(attrs, default=str)
        data.attrs[OURS + "_episode_dtypes"] = json.dumps({k: v.dtype.str for k, v in meta.items()})
        for i in range(store.num_episodes):
            ep = store.episode(i)
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = len(ep["action"])
            demo.attrs["success"] = bool(ep["success"][-1])
            for name, values in meta.items():
                demo.attrs[name] = values[i].item()
            actions = np.clip(ep["action"], lo, hi) if clip_actions else ep["action"]
            demo.create_dataset("actions", data=actions)
            demo.create_dataset("states", data=ep["sim_state"])
            demo.create_dataset("rewards", data=ep["reward"])
            dones = np.zeros(len(ep["action"]), bool)
            dones[-1] = True
            demo.create_dataset("dones", data=dones)
            demo.create_dataset("attempt", data=ep["attempt"])
            demo.create_dataset("success", data=ep["success"])
            obs = demo.create_group("obs")
            for name, values in ep.items():
                if name.startswith("obs/"):
                    group, key = name[4:].split("/", 1)
                    obs.create_dataset(f"{group}.{key}", data=values)
    tmp.replace(dst)
    return store.num_episodes


def _demo_names(data: h5py.Group) -> list[str]:
    names = [k for k in data.keys() if k.startswith("demo_")]
    return sorted(names, key=lambda k: int(k.split("_", 1)[1]) if k.split("_", 1)[1].isdigit() else k)


def _episode_from_demo(demo: h5py.Group) -> dict[str, np.ndarray]:
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
        names = _demo_names(data)
        first = _episode_from_demo(data[names[0]])
        layout = {k: (v.shape[1:], str(v.dtype)) for k, v in first.items()}
        if ours is not None:
            attrs = {k: v for k, v in ours.items() if k not in ("schema_version", "created_at", "reject_reasons")}
            meta_fields = json.loads(data.attrs[OURS + "_episode_dtypes"])
        else:
            env_args = json.loads(data.attrs.get("env_args", "{}") or "{}")
            attrs = {"env": env_args.get("env_name", "unknown"), "env_cfg": env_args.get("env_kwargs", {}),
                     "teacher": "imported", "imported_from": str(src)}
            meta_fields = {"seed": "uint64", "length": "int64", "n_attempts": "int64", "return": "float32"}
        store = EpisodeStore.create(dst, attrs, layout, meta_fields)
        for name in names:
            demo = data[name]
            ep = _episode_from_demo(demo)
            if set(ep) != set(layout):
                raise ConfigError(f"{src}:{name} has arrays {sorted(ep)}, the first demo has {sorted(layout)}")
            if ours is not None:
                meta = {k: demo.attrs[k] for k in meta_fields}
            else:
                meta = {"seed": int(demo.attrs.get("seed", 0)), "length": len(ep["action"]),
                        "n_attempts": int(ep["attempt"].max()) + 1, "return": float(ep["reward"].sum())}
            store.append_episode(ep, meta)
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
