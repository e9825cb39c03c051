"""The scripted expert in Isaac Lab against MuJoCo, on the same episodes, side by side in one run.

ours:     success of ``envs.scripted.ScriptedExpert`` in ``env.simulator=isaaclab`` (kit-less Newton, CPU)
baseline: the same expert in ``env.simulator=mujoco``
Both envs draw their episodes from the same seeds (the task logic is one and the same), so each env
index plays the same first K episodes in both; the episodes are matched by their seed, and env-steps/s
of both is measured on the way. Run it with the Isaac Lab venv (it has both simulators):

    .venv-isaaclab/bin/python bench/isaaclab_scripted.py [--env lift pick_loose] [--envs 16] [--episodes 4]

Prints a table and, as its last line, one JSON object with ``ours``, ``baseline`` and ``ratio``
(success, over all tasks' episodes) and each task's numbers.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from envs import make_env  # noqa: E402
from envs.scripted import ScriptedExpert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED = 2027  # apart from every training and evaluation seed of the pipeline


def play(env, episodes_per_env: int) -> tuple[dict[int, tuple[bool, float, int]], float]:
    """The first ``episodes_per_env`` episodes of every env: seed -> (success, length, attempts); env-steps/s."""
    expert = ScriptedExpert.for_env(env)
    obs, out = env.get_observations(), {}
    count = np.zeros(env.num_envs, int)
    steps, start = 0, time.perf_counter()
    while (count < episodes_per_env).any():
        obs, _, done, extras = env.step(expert.act(obs))
        expert.reset(done)
        steps += env.num_envs
        ep = extras["episode"]
        for i in torch.nonzero(done).flatten().tolist():
            if count[i] < episodes_per_env:
                out[int(ep["seed"][i])] = (bool(ep["success"][i]), float(ep["length"][i]), int(ep["attempts"][i]))
            count[i] += 1
    return out, steps / (time.perf_counter() - start)


def summary(eps: dict, seeds: list[int]) -> dict:
    s = np.array([eps[k][0] for k in seeds])
    return {"success": float(s.mean()), "successes": int(s.sum()), "episodes": len(seeds),
            "mean_episode_length": float(np.mean([eps[k][1] for k in seeds])),
            "mean_attempts": float(np.mean([eps[k][2] for k in seeds]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", nargs="+", default=["lift", "pick_loose"])
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=4, help="episodes per env (episodes = envs x this)")
    parser.add_argument("--sim-device", default="cpu", help="Isaac Lab's physics device, e.g. cuda:0")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "isaaclab_scripted.json"))
    args = parser.parse_args()
    rows = []
    print(f"{'task':<20} {'simulator':<10} {'success':>9} {'length':>7} {'attempts':>8} {'env-steps/s':>11}")
    for name in args.env:
        cfg = yaml.safe_load((ROOT / "configs" / "env" / f"{name}.yaml").read_text())
        cfg.update(seed=SEED, num_envs=args.envs)
        played = {}
        for sim in ("mujoco", "isaaclab"):
            env = make_env({**cfg, "simulator": sim, "sim_device": args.sim_device if sim == "isaaclab" else "cpu"})
            played[sim] = play(env, args.episodes)
            env.close()
        seeds = sorted(set(played["mujoco"][0]) & set(played["isaaclab"][0]))
        row = {"task": cfg["name"], "matched_episodes": len(seeds)}
        for sim, (eps, rate) in played.items():
            row[sim] = {**summary(eps, seeds), "env_steps_per_s": rate}
            r = row[sim]
            print(f"{cfg['name']:<20} {sim:<10} {r['successes']:>4}/{r['episodes']:<4} "
                  f"{r['mean_episode_length']:>7.1f} {r['mean_attempts']:>8.2f} {rate:>11.0f}")
        both = [(played["mujoco"][0][k][0], played["isaaclab"][0][k][0]) for k in seeds]
        row["same_outcome_share"] = float(np.mean([a == b for a, b in both]))
        rows.append(row)
    ours = float(np.mean([r["isaaclab"]["success"] for r in rows]))
    base = float(np.mean([r["mujoco"]["success"] for r in rows]))
    import mujoco

    result = {"bench": "isaaclab_scripted", "seed": SEED, "num_envs": args.envs, "mujoco": mujoco.__version__,
              "sim_device": args.sim_device,
              "ours": ours, "baseline": base, "ratio": ours / base if base else None, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
