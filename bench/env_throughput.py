"""Our VecEnv.step against bare MuJoCo stepping of the same scenes, side by side in one run.

ours:     MujocoVecEnv.step(zeros): threaded physics plus everything training needs (targets,
          held detection, attempts, occlusion, reward, both observation groups, auto-reset).
baseline: mujoco.rollout over the same per-env models with one MjData per thread, the whole
          horizon in one call (no Python per control step): the fastest bare stepping there is.
Both step N envs for the same number of control steps of ``substeps`` physics steps each.

    python bench/env_throughput.py [--env stack_pick_multi] [--steps 200] [--envs 64 256]

Prints a table and, as its last line, one JSON object with ``ours``, ``baseline`` and ``ratio``
(control steps per second, taken at the largest N) and every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from mujoco import rollout  # noqa: E402

from envs import make_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure_ours(env, steps: int) -> float:
    env.reset()
    zeros = torch.zeros(env.num_envs, env.num_actions)
    for _ in range(5):
        env.step(zeros)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(zeros)
    return env.num_envs * steps / (time.perf_counter() - start)


def measure_rollout(env, steps: int, threads: int) -> float:
    env.reset()
    N, sub = env.num_envs, env.cfg.substeps
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    size = mujoco.mj_stateSize(env.models[0], spec)
    state0 = np.zeros((N, size))
    for i in range(N):
        mujoco.mj_getState(env.models[i], env.datas[i], state0[i], spec)
    control = np.stack([d.ctrl.copy() for d in env.datas])[:, None, :]  # hold the reset targets
    datas = [mujoco.MjData(env.models[0]) for _ in range(threads)]
    kwargs = dict(nstep=sub * steps, persistent_pool=True)
    rollout.rollout(env.models, datas, state0, control, nstep=sub * 5, persistent_pool=True)  # warm up
    start = time.perf_counter()
    rollout.rollout(env.models, datas, state0, control, **kwargs)
    elapsed = time.perf_counter() - start
    rollout.shutdown_persistent_pool() if hasattr(rollout, "shutdown_persistent_pool") else None
    return N * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="stack_pick_multi")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--envs", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "env_throughput.json"))
    args = parser.parse_args()
    cfg = yaml.safe_load((ROOT / "configs" / "env" / f"{args.env}.yaml").read_text())
    cfg["seed"] = 0
    threads = os.cpu_count() or 1
    rows = []
    print(f"{cfg['name']}: {cfg['n_cubes']} cubes + base, timestep {cfg['timestep']} s x {cfg['substeps']} substeps, "
          f"{threads} threads; control steps per second")
    print(f"{'N':>6} {'ours':>10} {'rollout':>10} {'ratio':>7}")
    for n in args.envs:
        env = make_env(cfg, num_envs=n, num_threads=threads)
        ours = measure_ours(env, args.steps)
        base = measure_rollout(env, args.steps, threads)
        env.close()
        rows.append({"num_envs": n, "ours": ours, "baseline": base, "ratio": ours / base})
        print(f"{n:>6} {ours:>10.0f} {base:>10.0f} {ours / base:>7.2f}")
    result = {"bench": "env_throughput", "env": cfg["name"], "threads": threads, "mujoco": mujoco.__version__,
              "ours": rows[-1]["ours"], "baseline": rows[-1]["baseline"], "ratio": rows[-1]["ratio"], "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
