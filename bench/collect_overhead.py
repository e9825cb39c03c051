"""Collection with writing to zarr against the same rollouts without writing, in one run.

Both runs use the scripted teacher on the same env, seed and episode count, so they play identical
rollouts; the only difference is the store. Also reports resident memory after 100 and after all
episodes of the writing run (memory must stay flat as the store grows).

    python bench/collect_overhead.py [--env lift] [--episodes 1000]

Last line: JSON with ``ours`` (episodes/s with writing), ``baseline`` (without) and ``ratio``.
"""

from __future__ import annotations

import argparse
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
        self._attempts: list[int] = []

    def episode_meta(self):
        return {k: np.zeros(0) for k in EPISODE_LAYOUT} | {"n_attempts": np.array(self._attempts, int),
                                                          "round": np.zeros(0, int), "slot": np.zeros(0, int)}

    def rejected(self):
        return {"round": np.zeros(0, int), "slot": np.zeros(0, int), "reason": np.zeros(0, int)}

    def append_episode(self, data, meta):
        self.num_episodes += 1
        self.num_steps += len(data["action"])
        self._attempts.append(meta["n_attempts"])

    def append_rejected(self, record):
        pass

    def flush(self):
        pass


def run(env_name: str, episodes: int, num_envs: int, write: bool, out_dir: Path) -> tuple[float, dict]:
    cfg = yaml.safe_load((ROOT / "configs" / "env" / f"{env_name}.yaml").read_text())
    cfg.update(seed=0, num_envs=num_envs)
    env = make_env(cfg)
    teacher = ScriptedExpert.for_env(env)
    store = EpisodeStore.create(out_dir / "bench.zarr", {"env": env.cfg.name}, data_layout(env), EPISODE_LAYOUT) \
        if write else NullStore()
    rss = {}

    def progress(s):
        if s.num_episodes in (100, episodes) and str(s.num_episodes) not in rss:
            rss[str(s.num_episodes)] = round(rss_mib(), 1)

    start = time.perf_counter()
    collect(env, teacher, store, episodes, seed=0, filters=FilterConfig(), progress=progress)
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed, rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="lift")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "collect_overhead.json"))
    a = p.parse_args()
    # Interleaved and repeated (without, with, without, with), best of each: this machine is shared
    # and a single sequential pair swung the writing share between 18% and 28%.
    times: dict[bool, list[float]] = {False: [], True: []}
    rss: dict = {}
    for repeat in range(a.repeats):
        for write in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                elapsed, measured = run(a.env, a.episodes, a.num_envs, write=write, out_dir=Path(tmp))
            times[write].append(elapsed)
            if write and repeat == 0:
                rss = measured
    t_without, t_with = min(times[False]), min(times[True])
    ours, baseline = a.episodes / t_with, a.episodes / t_without
    print(f"{a.env}: {a.episodes} episodes, {a.num_envs} envs")
    print(f"  without writing {t_without:7.1f} s   with writing {t_with:7.1f} s   writing share "
          f"{(t_with - t_without) / t_with:.1%}")
    print(f"  RSS with writing: {rss} MiB (after N episodes)")
    result = {"bench": "collect_overhead", "env": a.env, "episodes": a.episodes, "ours": ours, "baseline": baseline,
              "ratio": ours / baseline, "write_share": (t_with - t_without) / t_with, "rss_mib": rss,
              "seconds_without": times[False], "seconds_with": times[True]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
