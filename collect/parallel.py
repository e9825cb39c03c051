"""Parallel collection (``collect.workers=W``): W processes, one shard each, merged in order.

Worker k plays rounds k, k+W, k+2W, ... with the same round seeds as a single-worker run, always
to the end of a round, and announces each finished round (its kept count) in a progress folder. A
worker stops before round r once every round below r is announced and together they hold the
target. The merge sorts all shards' episodes in the single-worker order (round, then finishing
step, then env slot) and keeps the first ``num_episodes``, with the rejections that came before
the cut: the merged store equals a single-worker run's, byte for byte (tested).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

from datasets.store import EpisodeStore


class RoundPlan:
    def __init__(self, progress_dir: Path, worker: int, workers: int, target: int):
        self.dir, self.first, self.step, self.target = Path(progress_dir), worker, workers, target
        self.dir.mkdir(parents=True, exist_ok=True)

    def round_done(self, round_index: int, kept: int) -> None:
        path = self.dir / f"round-{round_index:07d}.json"
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps({"kept": kept}))
        tmp.replace(path)

    def should_stop(self, round_index: int) -> bool:
        """True once an announced prefix of rounds 0..q (q < round_index) already holds the target."""
        known = {int(p.stem.split("-")[1]): json.loads(p.read_text())["kept"] for p in self.dir.glob("round-*.json")}
        total = 0
        for r in range(round_index):
            if r not in known:
                return False
            total += known[r]
            if total >= self.target:
                return True
        return False


def _worker(job: dict) -> None:
    """One worker process: its own env (fewer threads), teacher and shard."""
    import torch

    from collect.collector import EPISODE_LAYOUT, FilterConfig, collect, data_layout
    from common.policies import policy_from_checkpoint
    from envs import make_env

    torch.set_num_threads(1)
    env = make_env({**job["env_cfg"], "num_threads": job["threads"]})
    ckpt = torch.load(job["teacher_ckpt"], weights_only=True) if job["teacher_ckpt"] else {"kind": "scripted"}
    teacher = policy_from_checkpoint(ckpt, env)
    shard = Path(job["shard"])
    if shard.exists():
        store = EpisodeStore.open(shard, mode="a", flush_every=job["flush_every"])
    else:
        store = EpisodeStore.create(shard, job["attrs"], data_layout(env), EPISODE_LAYOUT, job["flush_every"])
    plan = RoundPlan(job["progress"], job["worker"], job["workers"], job["target"])
    collect(env, teacher, store, job["target"], job["seed"], FilterConfig(**job["filters"]), plan=plan)
    env.close()


def collect_parallel(out: Path, workers: int, job: dict, data_layout: dict, episode_layout: dict) -> EpisodeStore:
    """Run the workers (resuming their shards after a kill), then merge into ``out``."""
    shards_dir = out.with_name(out.name + ".shards")
    jobs = [{**job, "worker": k, "workers": workers, "shard": str(shards_dir / f"worker-{k}.zarr"),
             "progress": str(shards_dir / "progress"), "threads": max(1, (os.cpu_count() or 1) // workers)}
            for k in range(workers)]
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked MuJoCo or torch state
    procs = [ctx.Process(target=_worker, args=(j,)) for j in jobs]
    for p in procs:
        p.start()
    failed: list[int] = []
    while any(p.is_alive() for p in procs):
        failed = [k for k, p in enumerate(procs) if p.exitcode not in (None, 0)]
        if failed:  # the others would wait for rounds the failed worker will never announce
            for p in procs:
                p.terminate()
            break
        time.sleep(0.2)
    for p in procs:
        p.join()
    failed = failed or [k for k, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"collection workers {failed} failed; re-run the same command to resume their shards")
    store = merge_shards([Path(j["shard"]) for j in jobs], out, job["target"], job["attrs"], data_layout,
                         episode_layout, job["flush_every"])
    shutil.rmtree(shards_dir)
    return store


def merge_shards(shards: list[Path], out: Path, target: int, attrs: dict, data_layout: dict, episode_layout: dict,
                 flush_every: int) -> EpisodeStore:
    stores = [EpisodeStore.open(s) for s in shards]
    kept, rejected = [], []
    for k, s in enumerate(stores):
        meta, rej = s.episode_meta(), s.rejected()
        kept += [((int(meta["round"][i]), int(meta["length"][i]), int(meta["slot"][i])), k, i)
                 for i in range(s.num_episodes)]
        rejected += [((int(rej["round"][j]), int(rej["length"][j]), int(rej["slot"][j])), k, j)
                     for j in range(len(rej["round"]))]
    kept.sort()
    kept = kept[:target]
    cut = kept[-1][0] if kept else (-1, 0, 0)
    merged = EpisodeStore.create(out, attrs, data_layout, episode_layout, flush_every)
    reasons = stores[0].attrs["reject_reasons"] if stores else []
    records = [s.rejected() for s in stores]
    for _key, k, j in sorted(r for r in rejected if r[0] < cut):
        rec = records[k]
        merged.append_rejected({name: (reasons[int(v[j])] if name == "reason" else v[j]) for name, v in rec.items()})
    metas = [s.episode_meta() for s in stores]
    for _key, k, i in kept:
        merged.append_episode(stores[k].episode(i), {name: v[i] for name, v in metas[k].items()})
    merged.flush()
    return merged
