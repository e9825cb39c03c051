"""Our PPO against rsl-rl-lib's OnPolicyRunner on the same VecEnv: learning speed and throughput.

Same env (Lift-v1 with the teacher's training perturbations), same MLP sizes (256-128-64, ELU,
observation normalisation), num_envs, steps per env, epochs, minibatches, learning-rate schedule
and iterations; no expert-state curriculum on either side (rsl_rl has no such hook). Every
``--eval-every`` iterations both policies' deterministic actions run on the same fixed evaluation
episodes (a time-to-target curve); reported per seed: the curve, the env steps each needs to
first reach 0.5 and 0.9 success, and env steps per second over the training iterations alone
(rollout + update, the evaluations excluded). The two sides run one after the other per seed.

    pip install rsl-rl-lib==5.5.1   # the bench extra: pip install -e '.[bench]'
    python bench/ppo_vs_rsl_rl.py [--iterations 300] [--seeds 0 1 2] [--eval-every 25]

Writes ``--out`` (JSON) and a PNG beside it. Last line: one JSON object with ``ours``, ``baseline``
and ``ratio`` (env steps/s, ours / rsl_rl, medians over seeds) plus each side's median env steps to
0.5 and 0.9 success (a seed that never reached a target counts as infinitely many steps; ``null``
when the median itself is never).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from common.evaluate import evaluate, evaluation_seed  # noqa: E402
from envs import make_env  # noqa: E402
from envs.rsl_rl import RslRlVecEnv, runner_config, to_tensordict  # noqa: E402
from rl.networks import MLPActorCritic, MLPPolicyConfig  # noqa: E402
from rl.ppo import PPOConfig  # noqa: E402
from rl.runner import OnPolicyRunner, RunnerConfig  # noqa: E402

HIDDEN = [256, 128, 64]
STEPS_PER_ENV = 24
GROUP = "privileged"
TARGETS = (0.5, 0.9)


SIMULATOR = {"simulator": "mujoco", "sim_device": "cpu"}  # --simulator / --sim-device


def env_config(seed: int, num_envs: int, train: bool) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "env" / "lift.yaml").read_text())
    cfg.update(seed=seed, num_envs=num_envs, **SIMULATOR)
    if train:
        teacher = yaml.safe_load((ROOT / "configs" / "teacher" / "ppo.yaml").read_text())
        cfg["perturbations"].update(teacher["train_perturbations"])
    return cfg


class Curve:
    """Deterministic success on the same evaluation episodes at fixed iterations, and the time it took
    (subtracted from the training time)."""

    def __init__(self, args, seed: int):
        self.args, self.seed = args, seed
        self.points: list[dict] = []
        self.eval_seconds = 0.0

    def record(self, iteration: int, act) -> float:
        start = time.perf_counter()
        env = make_env(env_config(self.seed, min(64, self.args.eval_episodes), train=False))
        with torch.no_grad():
            result = evaluate(env, act, lambda done: None, self.args.eval_episodes, seed=evaluation_seed(self.seed),
                              progress=False)
        env.close()
        self.eval_seconds += time.perf_counter() - start
        steps = iteration * STEPS_PER_ENV * self.args.num_envs
        self.points.append({"iteration": iteration, "env_steps": steps, "success": result["success_rate"]})
        print(f"  it {iteration:4d}  {steps:8d} env steps  success {result['success_rate']:.3f}", flush=True)
        return result["success_rate"]


class CurveSelector:
    """The runner's selection hook (due/consider) used only to record the curve: it keeps no weights."""

    def __init__(self, curve: Curve, every: int):
        self.curve, self.every = curve, every

    def due(self, iteration: int, total: int) -> bool:
        return iteration % self.every == 0 or iteration == total

    def consider(self, iteration: int, policy) -> dict:
        self.curve.record(iteration, lambda obs: policy.act_inference(obs)[0])
        return {}


def train_ours(args, seed: int) -> tuple[float, Curve]:
    env = make_env(env_config(seed, args.num_envs, train=True))
    dim = env.obs_spec.dim(GROUP)
    torch.manual_seed(seed)
    policy = MLPActorCritic(MLPPolicyConfig(actor_obs=GROUP, critic_obs=GROUP, actor_dim=dim, critic_dim=dim,
                                            actor_hidden=HIDDEN, critic_hidden=HIDDEN))
    curve = Curve(args, seed)
    runner = OnPolicyRunner(env, policy, PPOConfig(), RunnerConfig(num_steps_per_env=STEPS_PER_ENV,
                                                                   num_iterations=args.iterations, seed=seed),
                            selector=CurveSelector(curve, args.eval_every))
    start = time.perf_counter()
    runner.learn(progress=False)
    elapsed = time.perf_counter() - start - curve.eval_seconds
    env.close()
    return args.iterations * STEPS_PER_ENV * args.num_envs / elapsed, curve


def train_rsl_rl(args, seed: int) -> tuple[float, Curve]:
    from rsl_rl.runners import OnPolicyRunner as RslRunner

    env = RslRlVecEnv(make_env(env_config(seed, args.num_envs, train=True)), seed=seed)
    cfg = runner_config(PPOConfig(), GROUP, HIDDEN, STEPS_PER_ENV)
    torch.manual_seed(seed)
    runner = RslRunner(env, cfg, log_dir=None, device="cpu")
    curve = Curve(args, seed)
    start = time.perf_counter()
    done = 0
    while True:
        policy = runner.get_inference_policy()  # eval mode: evaluation does not move its normaliser
        curve.record(done, lambda obs, policy=policy: policy(to_tensordict(obs)))
        if done == args.iterations:
            break
        chunk = min(args.eval_every, args.iterations - done)
        # learn() in chunks continues the same run: env, storage, optimizer and learning rate carry over;
        # it sets train mode again; the random initial episode lengths are drawn once, at the start.
        runner.learn(chunk, init_at_random_ep_len=done == 0)
        done += chunk
    elapsed = time.perf_counter() - start - curve.eval_seconds
    env.close()
    return args.iterations * STEPS_PER_ENV * args.num_envs / elapsed, curve


def steps_to(points: list[dict], target: float) -> int | None:
    """Env steps at the first evaluation at or above ``target`` (None: never within the run)."""
    return next((p["env_steps"] for p in points if p["success"] >= target), None)


def median_steps(values: list[int | None]) -> float | None:
    """Median with 'never' counted as infinitely many steps (None if the median itself is never)."""
    m = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(m) else m


def plot(runs: list[dict], path: Path, title: str) -> None:
    """Left: every seed's curve; right: the median over seeds at each evaluation, with the range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, agg) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = {"ours": "tab:blue", "rsl_rl": "tab:orange"}
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(runs):
        for side in ("ours", "rsl_rl"):
            pts = run[side]["curve"]
            ax.plot([p["env_steps"] for p in pts], [p["success"] for p in pts], color=colors[side], marker=".",
                    alpha=0.8, label=f"{side} seed {run['seed']}", linestyle=styles[i % len(styles)])
    for side in ("ours", "rsl_rl"):
        steps = [p["env_steps"] for p in runs[0][side]["curve"]]
        success = np.array([[p["success"] for p in run[side]["curve"]] for run in runs])  # (seeds, evaluations)
        agg.plot(steps, np.median(success, 0), color=colors[side], marker="o", label=f"{side}: median")
        agg.fill_between(steps, success.min(0), success.max(0), color=colors[side], alpha=0.15,
                         label=f"{side}: min-max over {len(runs)} seeds")
    for a in (ax, agg):
        for t in TARGETS:
            a.axhline(t, color="grey", linewidth=0.6, linestyle=":")
        a.set_xlabel("env steps")
        a.set_ylim(-0.02, 1.02)
    ax.set_ylabel("deterministic success (fixed evaluation episodes)")
    ax.set_title(title, fontsize=9)
    agg.set_title("median over seeds", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    agg.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(runs: list[dict], meta: dict, out: Path) -> dict:
    """Print the per-seed table, write the JSON (summary + runs) and the PNG; returns the summary."""
    print(f"\n{'seed':>4} {'side':8} {'env steps/s':>12} {'to 0.5':>9} {'to 0.9':>9} {'final':>6}")
    for run in runs:
        for side in ("ours", "rsl_rl"):
            r = run[side]
            fmt = [("never" if r[f"steps_to_{t}"] is None else str(r[f"steps_to_{t}"])) for t in TARGETS]
            print(f"{run['seed']:>4} {side:8} {r['env_steps_per_s']:>12.0f} {fmt[0]:>9} {fmt[1]:>9} "
                  f"{r['curve'][-1]['success']:>6.2f}")
    medians = {f"{side}_median_steps_to_{t}": median_steps([run[side][f"steps_to_{t}"] for run in runs])
               for side in ("ours", "rsl_rl") for t in TARGETS}
    # The ratio is the median of the per-seed ratios: the two sides of one seed run back to back, so a
    # slower stretch of a shared machine hits both; medians of the two columns would mix stretches.
    result = {"bench": "ppo_vs_rsl_rl", "env": "Lift-v1", **meta, "seeds": [run["seed"] for run in runs],
              "ours": statistics.median(run["ours"]["env_steps_per_s"] for run in runs),
              "baseline": statistics.median(run["rsl_rl"]["env_steps_per_s"] for run in runs),
              "ratio": statistics.median(run["ratio"] for run in runs), **medians}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "runs": runs}, indent=2))
    plot(runs, out.with_suffix(".png"), f"Lift-v1, ours vs rsl-rl-lib 5.5.1, {meta['num_envs']} envs, "
                                        f"eval on {meta['eval_episodes']} episodes")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=25, help="iterations between evaluations")
    p.add_argument("--eval-episodes", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="train nothing: merge the runs of earlier outputs (same settings) into one report")
    p.add_argument("--simulator", default="mujoco", choices=("mujoco", "isaaclab"),
                   help="isaaclab: run with .venv-isaaclab/bin/python (docs/isaaclab.md)")
    p.add_argument("--sim-device", default="cpu", help="Isaac Lab's physics device, e.g. cuda:0")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ppo_vs_rsl_rl.json"))
    args = p.parse_args()
    SIMULATOR.update(simulator=args.simulator, sim_device=args.sim_device)
    if args.merge:
        loaded = [json.loads(Path(f).read_text()) for f in args.merge]
        keys = ("env_steps", "num_envs", "eval_every", "eval_episodes")
        if any(tuple(d[k] for k in keys) != tuple(loaded[0][k] for k in keys) for d in loaded):
            print(f"error: --merge files differ in {keys}; merge runs of the same settings only", file=sys.stderr)
            sys.exit(2)
        runs = sorted((run for d in loaded for run in d["runs"]), key=lambda run: run["seed"])
        print(json.dumps(report(runs, {k: loaded[0][k] for k in keys}, Path(args.out))))
        return
    try:
        import rsl_rl  # noqa: F401
    except ImportError:
        print("error: rsl-rl-lib is not installed; pip install rsl-rl-lib==5.5.1 (or pip install -e '.[bench]')",
              file=sys.stderr)
        sys.exit(2)
    steps = args.iterations * STEPS_PER_ENV * args.num_envs
    print(f"Lift-v1, {args.num_envs} envs x {STEPS_PER_ENV} steps x {args.iterations} iterations = {steps} env steps "
          f"per run; evaluation every {args.eval_every} iterations on {args.eval_episodes} episodes; "
          f"seeds {args.seeds}")
    runs = []
    for seed in args.seeds:
        run = {"seed": seed}
        for side, train in (("ours", train_ours), ("rsl_rl", train_rsl_rl)):
            print(f"seed {seed}: {side}", flush=True)
            sps, curve = train(args, seed)
            run[side] = {"env_steps_per_s": sps, "curve": curve.points,
                         **{f"steps_to_{t}": steps_to(curve.points, t) for t in TARGETS}}
        run["ratio"] = run["ours"]["env_steps_per_s"] / run["rsl_rl"]["env_steps_per_s"]
        runs.append(run)
    meta = {"env_steps": steps, "num_envs": args.num_envs, "eval_every": args.eval_every,
            "eval_episodes": args.eval_episodes, **SIMULATOR}
    print(json.dumps(report(runs, meta, Path(args.out))))


if __name__ == "__main__":
    main()
