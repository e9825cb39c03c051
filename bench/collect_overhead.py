"""Collection with writing to zarr against the same rollouts without writing, in one run.

The runs use the scripted teacher on the same env, seed and episode count, so they play identical
rollouts; the only difference is the store. A third kind of run writes without the chunks' CRC-32C
(the store's default has it), so the checksum's cost is read side by side. Also reports resident
memory after 100, 1000 and all episodes of the first run with and without writing (memory must stay
flat as the store grows).

    python bench/collect_overhead.py [--env lift] [--episodes 1000]

Last line: JSON with ``ours`` (episodes/s with writing), ``baseline`` (without), ``ratio``, the
writing share in wall and CPU time, the share of time collection waited inside the store, and
``crc32c``: the same with and without the checksum.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from collect.collector import EPISODE_LAYOUT, FilterConfig, collect, data_layout  # noqa: E402
from datasets import zarr_io  # noqa: E402
from datasets.store import EpisodeStore  # noqa: E402
from envs import make_env  # noqa: E402
from envs.scripted import ScriptedExpert  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class NullStore:
    """The store interface without any I/O: what collection costs when nothing is written."""

    def __init__(self):
        self.num_episodes, self.num_steps = 0, 0
        self.attrs = {"reject_reasons": []}
        self._meta: dict[str, list] = {k: [] for k in EPISODE_LAYOUT}

    def episode_meta(self):
        return {k: np.array(v, dtype=EPISODE_LAYOUT[k]) for k, v in self._meta.items()}

    def rejected(self):
        return {"round": np.zeros(0, int), "slot": np.zeros(0, int), "reason": np.zeros(0, int)}

    def append_episode(self, data, meta):
        self.num_episodes += 1
        self.num_steps += len(data["action"])
        for k, v in self._meta.items():
            v.append(meta[k])

    def append_rejected(self, record):
        pass

    def flush(self):
        pass


class TimedStore(EpisodeStore):
    """The real store, timing how long collection waits inside its calls (the direct cost of
    writing, free of the run-to-run noise that the with/without difference carries)."""

    blocking_s = 0.0

    def _timed(self, method, *args):
        start = time.perf_counter()
        method(self, *args)
        self.blocking_s += time.perf_counter() - start

    def append_episode(self, data, meta):
        self._timed(EpisodeStore.append_episode, data, meta)

    def append_rejected(self, record):
        self._timed(EpisodeStore.append_rejected, record)

    def flush(self):
        self._timed(EpisodeStore.flush)


@contextlib.contextmanager
def without_checksum():
    """The store's codecs less the CRC-32C, for the duration (a bench-only switch, not a store option)."""
    full = zarr_io.codecs
    zarr_io.codecs = lambda: tuple(c for c in full() if type(c).__name__ != "Crc32cCodec")
    try:
        yield
    finally:
        zarr_io.codecs = full


def run(env_name: str, episodes: int, num_envs: int, write: bool, out_dir: Path) -> tuple[float, float, dict]:
    cfg = yaml.safe_load((ROOT / "configs" / "env" / f"{env_name}.yaml").read_text())
    cfg.update(seed=0, num_envs=num_envs)
    env = make_env(cfg)
    teacher = ScriptedExpert.for_env(env)
    store = TimedStore.create(out_dir / "bench.zarr", {"env": env.cfg.name}, data_layout(env), EPISODE_LAYOUT) \
        if write else NullStore()
    rss = {}

    def progress(s):
        if s.num_episodes in (100, 1000, episodes) and str(s.num_episodes) not in rss:
            rss[str(s.num_episodes)] = round(rss_mib(), 1)

    start, cpu_start = time.perf_counter(), time.process_time()
    collect(env, teacher, store, episodes, seed=0, filters=FilterConfig(), progress=progress)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    env.close()
    if write:
        rss["blocking_s"] = store.blocking_s
    return elapsed, cpu, rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="lift")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "collect_overhead.json"))
    a = p.parse_args()
    # Interleaved and repeated (without, with, without, with, ...), best of each: this machine is a
    # shared VM whose wall times swing by 30% between identical runs. CPU seconds of the process
    # (all threads, the background fold included) do not count time stolen by other VMs, so the
    # share is also given in CPU time.
    # modes: no store, the store as shipped, the store without chunk checksums
    modes = {"without": (False, contextlib.nullcontext), "with": (True, contextlib.nullcontext),
             "with_no_crc": (True, without_checksum)}
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    rss: dict = {}  # after N episodes, with and without writing (the first repeat)
    blocking: dict[str, list[float]] = {"with": [], "with_no_crc": []}  # share spent waiting inside the store
    for repeat in range(a.repeats):
        for mode, (write, patch) in modes.items():
            with tempfile.TemporaryDirectory() as tmp, patch():
                elapsed, cpu_s, measured = run(a.env, a.episodes, a.num_envs, write=write, out_dir=Path(tmp))
            wall[mode].append(elapsed)
            cpu[mode].append(cpu_s)
            if write:
                blocking[mode].append(measured.pop("blocking_s") / elapsed)
            if repeat == 0 and mode != "with_no_crc":
                rss[mode] = measured
    t_without, t_with, t_plain = min(wall["without"]), min(wall["with"]), min(wall["with_no_crc"])
    c_without, c_with, c_plain = min(cpu["without"]), min(cpu["with"]), min(cpu["with_no_crc"])
    ours, baseline = a.episodes / t_with, a.episodes / t_without
    print(f"{a.env}: {a.episodes} episodes, {a.num_envs} envs, best of {a.repeats}")
    print(f"  wall: without writing {t_without:6.1f} s   with writing {t_with:6.1f} s   writing share "
          f"{(t_with - t_without) / t_with:.1%}")
    print(f"  cpu:  without writing {c_without:6.1f} s   with writing {c_with:6.1f} s   writing share "
          f"{(c_with - c_without) / c_with:.1%}")
    print(f"  crc32c: wall {t_plain:6.1f} s without it, {t_with:6.1f} s with it; cpu {c_plain:6.1f} s / "
          f"{c_with:6.1f} s ({(c_with - c_plain) / c_with:+.1%} of the writing run's cpu)")
    print(f"  time collection waits inside the store: {min(blocking['with']):.1%} to {max(blocking['with']):.1%} "
          f"of the writing runs")
    print(f"  RSS after N episodes, MiB: with writing {rss['with']}, without {rss['without']}")
    result = {"bench": "collect_overhead", "env": a.env, "episodes": a.episodes, "ours": ours, "baseline": baseline,
              "ratio": ours / baseline, "write_share": (t_with - t_without) / t_with,
              "write_share_cpu": (c_with - c_without) / c_with,
              "store_blocking_share": blocking["with"], "rss_mib": rss,
              "seconds_without": wall["without"], "seconds_with": wall["with"],
              "cpu_seconds_without": cpu["without"], "cpu_seconds_with": cpu["with"],
              "crc32c": {"seconds_without_crc": wall["with_no_crc"], "cpu_seconds_without_crc": cpu["with_no_crc"],
                         "store_blocking_share_without_crc": blocking["with_no_crc"],
                         "cpu_share": (c_with - c_plain) / c_with, "wall_share": (t_with - t_plain) / t_with}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
