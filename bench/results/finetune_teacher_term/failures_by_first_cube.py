"""Where the PickLoose students fail: the 200 evaluation episodes of stage=eval (seed 0) split by whether the
cube nearest the gripper at the start is the loose one (no retry needed) or the welded one (a retry needed).

    python bench/results/finetune_teacher_term/failures_by_first_cube.py NAME=CKPT [NAME=CKPT ...]

Writes failures_by_first_cube.json beside itself: per checkpoint the successes, [successes, episodes] of each
half, and the attempt counts of the failed episodes. The totals equal stage=eval's (the same env, seeds,
rounds and one torch thread)."""

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

import pipeline  # noqa: E402
from common.evaluate import ROUND_STRIDE, evaluation_env_config, evaluation_seed, one_thread  # noqa: E402
from common.policies import load_policy  # noqa: E402
from common.rollout import first_episodes  # noqa: E402
from envs import make_env  # noqa: E402


def nearest_is_loose(env) -> np.ndarray:
    """(N,) whether each env's nearest cube to the gripper is the loose one (at the episode's start)."""
    cubes = np.stack([env._qpos[:, a: a + 3] for a in env._qadr[:2]], 1)
    nearest = np.linalg.norm(cubes - env._qpos[:, None, 0:3], axis=2).argmin(1)
    return env.st["static"][np.arange(env.num_envs), nearest] == 0


def main(checkpoints: list[str], n: int = 200) -> dict:
    with initialize_config_dir(config_dir=pipeline.CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["env=pick_loose", "preset=quick"])
    env = make_env(evaluation_env_config(cfg, n))
    out = {}
    for name, path in (a.split("=", 1) for a in checkpoints):
        policy = load_policy(path, env)
        rows: list[dict] = []
        for r in range(-(-n // env.num_envs)):
            keep = min(env.num_envs, n - len(rows))
            first: dict = {}

            def before(alive, first=first):
                first.setdefault("loose", nearest_is_loose(env))
            with one_thread():
                ep = first_episodes(env, policy.act, policy.reset, seed=evaluation_seed(0) + ROUND_STRIDE * r,
                                    before_step=before)
            rows += [{"loose_first": bool(first["loose"][i]), "success": bool(ep["success"][i]),
                      "attempts": int(ep["attempts"][i])} for i in range(keep)]
        loose = np.array([x["loose_first"] for x in rows])
        success = np.array([x["success"] for x in rows])
        out[name] = {"successes": int(success.sum()),
                     "loose_first": [int(success[loose].sum()), int(loose.sum())],
                     "welded_first": [int(success[~loose].sum()), int((~loose).sum())],
                     "failures_attempts": [x["attempts"] for x in rows if not x["success"]]}
        print(name, out[name])
    Path(__file__).with_suffix(".json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
