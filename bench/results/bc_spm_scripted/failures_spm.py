"""Why the StackPickMulti students fail: stage=eval's episodes (evaluation seeds 0, 1, 2 unless given) traced
step by step, each failed episode classed by what it did.

    python bench/results/bc_spm_scripted/failures_spm.py NAME=CKPT [NAME=CKPT ...] [--seeds 0 1 2] [--n 200]

Per episode: the welded cubes, the tower levels filled (most and last), the grasps, and the grasps of a cube
that a failed lift had already shown to be welded (``regrasp_known_static``, and how many steps after that
reveal each such grasp came: a memory failure; the
privileged teacher never does it, it sees which cubes are revealed). For a history transformer with the
gated memory update, also its update gate z (m' = (1 - z) m + z h) over the same rollouts: per memory
width the mean z and the half-life in memory updates it implies, log 0.5 / log(1 - z). Writes
failures_spm.json beside itself. The success totals equal stage=eval's (the same env, seeds, rounds and
one torch thread)."""

import argparse
import json
import sys
from collections import Counter
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


def gate_recorder(policy) -> list | None:
    """Hook the transformer's MemoryGate: a list that fills with each update's (D,) mean z; None without one."""
    from rl.student.model import MemoryGate

    net = getattr(policy, "net", None)  # the scripted expert has none
    gates = [m for m in net.modules() if isinstance(m, MemoryGate)] if net is not None else []
    if not gates:
        return None
    zs: list = []

    def hook(gate, inputs, output):
        z = gate.gates(*inputs)[1]  # (N, M, D) the update share of this block end
        zs.append(z.reshape(-1, z.shape[-1]).mean(0).numpy())
    gates[0].register_forward_hook(hook)
    return zs


def gate_summary(zs: list) -> dict:
    z = np.stack(zs).mean(0)  # (D,) mean update share per memory width
    half_life = np.log(0.5) / np.log1p(-np.clip(z, 1e-6, 1 - 1e-6))
    return {"mean_z": float(z.mean()),
            "z_quantiles_0_25_50_75_100": np.quantile(z, [0, .25, .5, .75, 1]).round(3).tolist(),
            "half_life_updates_median_and_longest": [float(np.median(half_life)), float(half_life.max())]}


def trace_round(env, policy, seed: int) -> tuple[dict, dict]:
    """One round of first episodes with (T, N, ...) traces of the held cubes, the welded and revealed
    flags and the tower levels filled before each step."""
    trace: dict[str, list] = {"held": [], "known": [], "filled": []}

    def before(alive):
        f = env._frame()
        trace["held"].append(f.held[:, :f.n_cubes].copy())
        trace["known"].append(f.known[:, :f.n_cubes].copy())
        trace["filled"].append(env.task.levels_filled(f).copy())
        trace.setdefault("static", f.static[:, :f.n_cubes].copy())
    with one_thread():
        ep = first_episodes(env, policy.act, policy.reset, seed=seed, before_step=before)
    return ep, {k: np.stack(v) if isinstance(v, list) else v for k, v in trace.items()}


def episode_record(ep: dict, tr: dict, i: int) -> dict:
    L = int(ep["length"][i])
    held, known, filled, static = tr["held"][:L, i], tr["known"][:L, i], tr["filled"][:L, i], tr["static"][i]
    grasp = held[1:] & ~held[:-1]  # (L-1, C) a grasp of the cube starts at this step
    revealed_at = np.where(known.any(0), known.argmax(0), L)  # (C,) the step the cube's flags were revealed
    t, c = np.nonzero(grasp & static & known[:-1])
    return {"success": bool(ep["success"][i]), "length": L, "attempts": int(ep["attempts"][i]),
            "n_static": int(static.sum()), "max_filled": int(filled.max()), "last_filled": int(filled[-1]),
            "grasps": int(grasp.sum()), "grasps_static": int((grasp & static).sum()),
            "regrasp_known_static": len(t),
            "regrasp_steps_after_reveal": (t + 1 - revealed_at[c]).tolist()}


def summarise(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["success"]]
    fail = [r for r in rows if not r["success"]]
    by_static = {str(k): [sum(r["success"] for r in rows if r["n_static"] == k), sum(r["n_static"] == k for r in rows)]
                 for k in sorted({r["n_static"] for r in rows})}
    return {"successes": len(ok), "episodes": len(rows),
            "successes_by_welded_cubes": by_static,  # welded count -> [successes, episodes]
            "failed": len(fail),
            "failed_regrasping_a_known_welded_cube": sum(r["regrasp_known_static"] > 0 for r in fail),
            "succeeded_regrasping_a_known_welded_cube": sum(r["regrasp_known_static"] > 0 for r in ok),
            "regrasp_steps_after_reveal_in_failures_quartiles": np.quantile(
                [g for r in fail for g in r["regrasp_steps_after_reveal"]] or [0], [.25, .5, .75]).tolist(),
            "failed_regrasping_after_filling_a_level": sum(
                r["regrasp_known_static"] > 0 and r["max_filled"] >= 1 for r in fail),
            "failed_after_filling_the_tower": sum(r["max_filled"] >= 2 for r in fail),
            "failed_never_filling_a_level": sum(r["max_filled"] == 0 for r in fail),
            "failed_by_levels_most_last_welded": {f"{a}/{b}/{c}": n for (a, b, c), n in sorted(Counter(
                (r["max_filled"], r["last_filled"], r["n_static"]) for r in fail).items())}}


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="+", help="NAME=CKPT")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=200, help="episodes per evaluation seed")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=pipeline.CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["env=stack_pick_multi", "preset=full"])
    env = make_env(evaluation_env_config(cfg, args.n))
    out_path = Path(__file__).with_suffix(".json")
    out = json.loads(out_path.read_text()) if out_path.exists() else {}
    for name, path in (a.split("=", 1) for a in args.checkpoints):
        policy = load_policy(path, env)
        zs = gate_recorder(policy)
        rows: list[dict] = []
        for s in args.seeds:
            start = len(rows)
            for r in range(-(-args.n // env.num_envs)):
                keep = min(env.num_envs, args.n - (len(rows) - start))
                ep, tr = trace_round(env, policy, evaluation_seed(s) + ROUND_STRIDE * r)
                rows += [episode_record(ep, tr, i) for i in range(keep)]
        out[name] = {"checkpoint": path, "seeds": args.seeds, **summarise(rows)}
        if zs:
            out[name]["memory_gate"] = gate_summary(zs)
        print(name, json.dumps(out[name]))
    out_path.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
