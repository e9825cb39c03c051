"""The imitation term of the student's PPO fine-tuning: its burn-in without gradient against backprop through it.

ours:     ``PPO._sequence_imitation_error`` as fine-tuning runs it: each demonstrated window's burn-in
          builds the memory under no_grad, then its last ``seq_len`` steps run from it with gradient.
baseline: the same windows in one pass with gradient through the burn-in (the term before 2026-12-01).
Both compute the same forward (the script checks it) on the same windows; only the backward differs.
One step = sample the windows, forward, backward. The student is the bc defaults
(configs/bc/default.yaml's ``transformer:``) on ``--env``'s observation spec, or ``--student PATH``;
the demonstrations are random episodes of that spec (the cost does not depend on their values).

    python bench/imitation_cost.py [--env stack_pick_multi] [--windows 48] [--steps 20] [--rounds 5]

Last line: one JSON object (``ours``, ``baseline`` in imitation steps/s, ``ratio`` = ours / baseline),
also written to ``--out``. A fine-tuning update runs one step per minibatch (5 epochs x 4 by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from envs import make_env  # noqa: E402
from rl.demo_sequences import DemoSequences  # noqa: E402
from rl.ppo import PPO, PPOConfig  # noqa: E402
from rl.student.checkpoint import load_student  # noqa: E402
from rl.student.model import build_student  # noqa: E402
from rl.student_actor_critic import StudentActorCritic  # noqa: E402


def whole_window_error(ppo: PPO, windows: int) -> torch.Tensor:
    """The baseline: the windows in one pass with gradient through the burn-in, loss on the valid steps."""
    w = ppo.demo_sequences.sample(windows, ppo.generator)
    dist = ppo.policy.evaluate_actor({"policy": w["obs"]["policy"]}, None, w["starts"])  # (N, B+L, A)
    error = (dist.mean - w["actions"]).pow(2).mean(-1)
    valid = w["valid"].float()
    return (error * valid).sum() / valid.sum()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="stack_pick_multi")
    p.add_argument("--student", default=None, help="a student.pt (default: the bc defaults, untrained)")
    p.add_argument("--windows", type=int, default=48, help="windows per step (fine-tuning: its minibatch's sequences)")
    p.add_argument("--seq-len", type=int, default=8)
    p.add_argument("--burn-in", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "imitation_cost.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    env_cfg = yaml.safe_load((ROOT / "configs" / "env" / f"{a.env}.yaml").read_text())
    env = make_env({**env_cfg, "seed": 0, "num_envs": 1})
    spec, A = env.obs_spec, env.num_actions
    env.close()
    torch.manual_seed(0)
    if a.student:
        student = load_student(a.student, str(env_cfg["name"]))[0]
    else:
        block = yaml.safe_load((ROOT / "configs" / "bc" / "default.yaml").read_text())["transformer"]
        student = build_student("transformer", spec, {**block, "action_dim": A})
    policy = StudentActorCritic(student, spec.dim("privileged"), critic_hidden=[64])
    g = np.random.default_rng(0)
    ends = np.cumsum(g.integers(60, 300, size=64))
    arrays = {"obs": g.normal(size=(int(ends[-1]), spec.dim("policy"))).astype(np.float32),
              "action": g.normal(size=(int(ends[-1]), A)).astype(np.float32), "ends": ends}
    sides = {}
    for name in ("ours", "baseline"):
        ppo = PPO(policy, PPOConfig(bc_coef=1.0), generator=torch.Generator().manual_seed(1))
        ppo.set_demonstration_sequences(DemoSequences(arrays, "policy", a.seq_len, burn_in=a.burn_in))
        sides[name] = ppo
    # the same windows (same generator seed) give the same loss both ways: only the backward differs
    ours_loss = sides["ours"]._sequence_imitation_error(a.windows)
    base_loss = whole_window_error(sides["baseline"], a.windows)
    same = abs(ours_loss.item() - base_loss.item()) <= 1e-5 * max(1.0, abs(base_loss.item()))
    fns = {"ours": lambda: sides["ours"]._sequence_imitation_error(a.windows),
           "baseline": lambda: whole_window_error(sides["baseline"], a.windows)}
    rates: dict[str, list[float]] = {"ours": [], "baseline": []}
    for r in range(a.rounds):
        for name in (("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")):
            start = time.perf_counter()
            for _ in range(a.steps):
                policy.zero_grad()
                fns[name]().backward()
            rates[name].append(a.steps / (time.perf_counter() - start))
    ratios = [o / b for o, b in zip(rates["ours"], rates["baseline"])]
    result = {"bench": "imitation_cost", "env": env_cfg["name"], "student": a.student or "bc defaults (untrained)",
              "unit": "imitation steps/s (sample, forward, backward)", "windows": a.windows,
              "seq_len": a.seq_len, "burn_in": a.burn_in, "threads": a.threads, "same_loss": same,
              "loss": [ours_loss.item(), base_loss.item()],
              "ours": statistics.median(rates["ours"]), "baseline": statistics.median(rates["baseline"]),
              "ratio": statistics.median(ratios), "ratios": ratios}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"{result['env']}: {a.windows} windows of {a.burn_in} + {a.seq_len} steps: ours "
          f"{result['ours']:.2f} steps/s, whole-window backprop {result['baseline']:.2f}, ratio {result['ratio']:.2f}"
          f" (same loss: {same})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
