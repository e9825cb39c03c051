"""Our PPO with one of rsl-rl-lib 5.5.1's differences put in at a time, on bench/ppo_vs_rsl_rl.py's task.

The experiments behind issue #14 (is our PPO slower than rsl_rl, and which difference is why).
tests/test_rsl_rl.py shows that one update on the same rollout moves the weights as rsl_rl's does;
what is left to differ between the two runs is listed here, each patched into our side alone:

  norm       the observation normaliser divides by (std + eps) as rsl_rl's, not sqrt(var + eps)
  perm       one minibatch permutation for all epochs (rsl_rl), not a new one per epoch
  vst        time-outs bootstrapped with V(s_t) (rsl_rl), not V(final_obs)
  scalarstd  the std itself is the parameter, clamped at 1e-6 as rsl_rl's (an experiment only:
             this project keeps an unclamped log-std)
  boundsX    our PPO's penalty on the mean beyond the bounds with bounds_coef X (rsl_rl has none)

    python bench/ppo_variants.py VARIANT[+VARIANT] [--seeds 0 1 2] [--iterations 300]

Each variant's curve is recorded as bench/ppo_vs_rsl_rl.py records ours (same evaluation episodes).
Last line: one JSON object with ``ours`` (the variant's median env steps to 0.9 success, null when
never), ``baseline`` (the unpatched side, when --baseline names an earlier ppo_vs_rsl_rl.py JSON with
the same seeds) and ``ratio`` (variant / baseline; below 1 is faster).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ppo_vs_rsl_rl as bench  # noqa: E402
import torch  # noqa: E402
from torch.distributions import Normal  # noqa: E402

from rl import networks, normalizer, storage  # noqa: E402

VARIANTS = ("norm", "perm", "vst", "scalarstd", "bounds")


def patch_norm() -> None:
    def forward(self, x):
        return x if not self.enabled else (x - self.mean) / (torch.sqrt(self.var) + self.eps)

    normalizer.EmpiricalNormalizer.forward = forward


def patch_perm() -> None:
    def minibatches(self, num_minibatches, num_epochs, generator=None):
        total = self.T * self.N
        size = total // num_minibatches
        order = torch.randperm(total, generator=generator)  # drawn once, as rsl_rl's mini_batch_generator
        flat = {"obs": {k: v.reshape(total, -1) for k, v in self.obs.items()},
                "actions": self.actions.reshape(total, -1), "values": self.values.reshape(total),
                "log_probs": self.log_probs.reshape(total), "means": self.means.reshape(total, -1),
                "stds": self.stds.reshape(total, -1), "advantages": self.advantages.reshape(total),
                "returns": self.returns.reshape(total)}
        for _ in range(num_epochs):
            for i in range(num_minibatches):
                idx = order[i * size: (i + 1) * size]
                yield {k: ({g: x[idx] for g, x in v.items()} if isinstance(v, dict) else v[idx])
                       for k, v in flat.items()}

    storage.RolloutStorage.minibatches = minibatches


def patch_vst() -> None:
    """The runner bootstraps with V(extras["final_obs"]): hand it the observation the step acted on."""
    make = bench.make_env

    def make_env(cfg):
        env = make(cfg)
        step, reset, last = env.step, env.reset, {}

        def new_reset(*args, **kwargs):
            last["obs"] = reset(*args, **kwargs)
            return last["obs"]

        def new_step(actions):
            obs, rewards, dones, extras = step(actions)
            extras = {**extras, "final_obs": last["obs"]}
            last["obs"] = obs
            return obs, rewards, dones, extras

        env.reset, env.step = new_reset, new_step
        return env

    bench.make_env = make_env


def patch_scalarstd() -> None:
    init = networks.MLPActorCritic.__init__

    def new_init(self, cfg):
        init(self, cfg)
        self.std_param = torch.nn.Parameter(torch.full((cfg.action_dim,), float(cfg.init_std)))

    def distribution(self, obs):
        mean = self.mean_action(obs)
        return Normal(mean, self.std_param.clamp(min=1e-6).expand_as(mean))

    networks.MLPActorCritic.__init__ = new_init
    networks.MLPActorCritic.distribution = distribution


def apply(variant: str) -> None:
    for part in variant.split("+"):
        if part.startswith("bounds"):
            bench.PPOConfig = functools.partial(bench.PPOConfig, bounds_coef=float(part[len("bounds"):]))
        elif part in ("norm", "perm", "vst", "scalarstd"):
            globals()[f"patch_{part}"]()
        else:
            print(f"error: unknown variant {part!r}; choose from {', '.join(VARIANTS)} (bounds as boundsX, "
                  f"e.g. bounds0.1), joined with +", file=sys.stderr)
            sys.exit(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variant")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-episodes", type=int, default=64)
    p.add_argument("--baseline", help="an earlier bench/ppo_vs_rsl_rl.py JSON: its 'ours' runs are the baseline")
    p.add_argument("--out", default=None, help="default: bench/results/ppo_variants/VARIANT.json")
    args = p.parse_args()
    apply(args.variant)
    runs = {}
    for seed in args.seeds:
        print(f"seed {seed}: ours with {args.variant}", flush=True)
        sps, curve = bench.train_ours(args, seed)
        runs[seed] = {"env_steps_per_s": sps, "curve": curve.points,
                      **{f"steps_to_{t}": bench.steps_to(curve.points, t) for t in bench.TARGETS}}
    result = {"bench": "ppo_variants", "variant": args.variant, "seeds": args.seeds,
              **{f"median_steps_to_{t}": bench.median_steps([r[f"steps_to_{t}"] for r in runs.values()])
                 for t in bench.TARGETS}}
    result["ours"], result["baseline"], result["ratio"] = result["median_steps_to_0.9"], None, None
    if args.baseline:
        base = {run["seed"]: run["ours"] for run in json.loads(Path(args.baseline).read_text())["runs"]}
        if not set(args.seeds) <= set(base):
            print(f"error: --baseline {args.baseline} lacks seeds {sorted(set(args.seeds) - set(base))}",
                  file=sys.stderr)
            sys.exit(2)
        result["baseline"] = bench.median_steps([base[s]["steps_to_0.9"] for s in args.seeds])
        if result["ours"] is not None and result["baseline"]:
            result["ratio"] = result["ours"] / result["baseline"]
    for seed, r in runs.items():
        print(f"seed {seed}: to 0.5 {r['steps_to_0.5']}, to 0.9 {r['steps_to_0.9']}")
    out = Path(args.out or ROOT / "bench" / "results" / "ppo_variants" / f"{args.variant}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "runs": runs}, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
