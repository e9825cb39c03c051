"""Our PPO against rsl-rl-lib's OnPolicyRunner on the same VecEnv, side by side in one run.

Same env (Lift-v1 with the teacher's training perturbations), same MLP sizes (256-128-64, ELU,
observation normalisation), num_envs, steps per env, epochs, minibatches, learning-rate schedule
and iterations; no expert-state curriculum on either side (rsl_rl has no such hook). Reported:
env steps per second over whole training iterations (rollout + update), and the success rate of
each trained policy's deterministic actions on the same evaluation seeds.

    pip install rsl-rl-lib==5.5.1   # the bench extra: pip install -e '.[bench]'
    python bench/ppo_vs_rsl_rl.py [--iterations 100] [--num-envs 64]

Last line: one JSON object with ``ours``, ``baseline`` and ``ratio`` (env steps/s, ours / rsl_rl).
"""

from __future__ import annotations

import argparse
import json
import os
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


def env_config(seed: int, num_envs: int, train: bool) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "env" / "lift.yaml").read_text())
    cfg.update(seed=seed, num_envs=num_envs)
    if train:
        teacher = yaml.safe_load((ROOT / "configs" / "teacher" / "ppo.yaml").read_text())
        cfg["perturbations"].update(teacher["train_perturbations"])
    return cfg


def train_ours(args) -> tuple[float, MLPActorCritic]:
    env = make_env(env_config(args.seed, args.num_envs, train=True))
    dim = env.obs_spec.dim(GROUP)
    torch.manual_seed(args.seed)
    policy = MLPActorCritic(MLPPolicyConfig(actor_obs=GROUP, critic_obs=GROUP, actor_dim=dim, critic_dim=dim,
                                            actor_hidden=HIDDEN, critic_hidden=HIDDEN))
    runner = OnPolicyRunner(env, policy, PPOConfig(), RunnerConfig(num_steps_per_env=STEPS_PER_ENV,
                                                                   num_iterations=args.iterations, seed=args.seed))
    start = time.perf_counter()
    runner.learn(progress=False)
    elapsed = time.perf_counter() - start
    env.close()
    return args.iterations * STEPS_PER_ENV * args.num_envs / elapsed, policy


def train_rsl_rl(args):
    from rsl_rl.runners import OnPolicyRunner as RslRunner

    env = RslRlVecEnv(make_env(env_config(args.seed, args.num_envs, train=True)), seed=args.seed)
    cfg = runner_config(PPOConfig(), GROUP, HIDDEN, STEPS_PER_ENV)
    torch.manual_seed(args.seed)
    runner = RslRunner(env, cfg, log_dir=None, device="cpu")
    start = time.perf_counter()
    runner.learn(args.iterations, init_at_random_ep_len=True)
    elapsed = time.perf_counter() - start
    env.close()
    return args.iterations * STEPS_PER_ENV * args.num_envs / elapsed, runner.get_inference_policy()


def success(act, args) -> float:
    env = make_env(env_config(args.seed, 64, train=False))
    result = evaluate(env, act, lambda done: None, args.eval_episodes, seed=evaluation_seed(args.seed), progress=False)
    env.close()
    return result["success_rate"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--eval-episodes", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ppo_vs_rsl_rl.json"))
    args = p.parse_args()
    try:
        import rsl_rl  # noqa: F401
    except ImportError:
        print("error: rsl-rl-lib is not installed; pip install rsl-rl-lib==5.5.1 (or pip install -e '.[bench]')",
              file=sys.stderr)
        sys.exit(2)
    steps = args.iterations * STEPS_PER_ENV * args.num_envs
    print(f"Lift-v1, {args.num_envs} envs x {STEPS_PER_ENV} steps x {args.iterations} iterations = {steps} env steps")
    ours_sps, ours_policy = train_ours(args)
    rsl_sps, rsl_policy = train_rsl_rl(args)
    with torch.no_grad():
        ours_success = success(lambda obs: ours_policy.act_inference(obs)[0], args)
        rsl_success = success(lambda obs: rsl_policy(to_tensordict(obs)), args)
    print(f"{'':10} {'env steps/s':>12} {'success':>8}")
    print(f"{'ours':10} {ours_sps:>12.0f} {ours_success:>8.2f}")
    print(f"{'rsl_rl':10} {rsl_sps:>12.0f} {rsl_success:>8.2f}")
    result = {"bench": "ppo_vs_rsl_rl", "env": "Lift-v1", "env_steps": steps, "ours": ours_sps, "baseline": rsl_sps,
              "ratio": ours_sps / rsl_sps, "ours_success": ours_success, "rsl_rl_success": rsl_success,
              "eval_episodes": args.eval_episodes, "seed": args.seed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
