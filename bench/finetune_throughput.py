"""Fine-tuning throughput: PPO on the history student against the MLP teacher's PPO, same env, one run.

ours:      ``OnPolicyRunner`` on ``StudentActorCritic``: the HistoryTransformer student (the bc defaults of
           configs/bc/default.yaml's ``transformer:`` block, its normaliser fitted on a few env
           observations; or ``--student PATH``, a student.pt) as the actor, a privileged MLP critic
           (the teacher's critic sizes) beside it; rollouts stored as sequences of ``--seq-len`` steps
           with their memory (rl/recurrent_storage.py), the update through ``forward_sequence``.
baseline:  the same runner on the teacher's ``MLPActorCritic`` (``teacher.ppo_teacher.build_policy`` with
           configs/teacher/ppo.yaml) on the privileged group.
Both: the same env config (``--env``, with the teacher's ``train_perturbations`` merged in, as
stage=teacher trains), num_envs, steps per env, and the same PPOConfig (configs/teacher/ppo.yaml's
``ppo:``: epochs, minibatches, schedule); every update trains the actor (no critic warm-up); each
side has its own env instance of the same config and seed. Ours' epochs and minibatches are the
fine-tuning stage's as ``python pipeline.py preset=<--preset>`` composes them (default ``full``, the recipe the
README's fine-tuning results use; ``--preset none``: the teacher's, i.e. equal settings); ``--ours-ppo num_epochs=2``
overrides ours' PPOConfig on top. The baseline keeps the teacher's PPOConfig.

The sides alternate in one process: a round runs ``--iterations`` PPO iterations of each (the order
flips every round), after ``--warmup`` iterations each that are not timed. Times come from the
runner's own per-iteration metrics: ``s_per_rollout`` and ``s_per_iteration`` (update = iteration -
rollout: the PPO update, the critic normaliser's update and the storage clear). env steps/s of a
round = its iterations' env steps / their time; ``ours``/``baseline`` are medians over the rounds and
``ratio`` the median of the per-round ratios (both sides of a round share the machine's load).

    python bench/finetune_throughput.py [--env pick_loose] [--preset full|quick|none] [--rounds 6] [--threads 1]
                                        [--profile 2] [--ours-ppo K=V ...]

``--profile N``: after the rounds, cProfile over N more iterations of ours: where its time goes
(rollout: the per-step pass, the critic, env.step, storage and memory; update: the sequence
forward, backward, the optimizer). Last stdout line: one JSON object (``ours``, ``baseline``,
``ratio`` in env steps/s, plus detail), also written to ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

import pipeline  # noqa: E402  (its import registers the config schema the yamls compose onto)
from envs import env_config_with, make_env  # noqa: E402
from rl.ppo import PPOConfig  # noqa: E402
from rl.runner import OnPolicyRunner, RunnerConfig  # noqa: E402
from rl.student.checkpoint import load_student  # noqa: E402
from rl.student.model import build_student  # noqa: E402
from rl.student_actor_critic import StudentActorCritic  # noqa: E402
from teacher.ppo_teacher import build_policy  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "finetune_throughput.json"
TARGET = 0.6  # the target for ours / baseline env steps/s


def load_yaml(*parts: str) -> dict:
    return yaml.safe_load(ROOT.joinpath("configs", *parts).read_text())


def env_config(name: str, seed: int, num_envs: int, env_threads: int | None) -> dict:
    """configs/env/<name>.yaml with the teacher's training perturbations merged, as stage=teacher trains."""
    cfg = load_yaml("env", f"{name}.yaml")
    cfg["seed"] = seed  # the yaml's ${seed} is the pipeline's interpolation
    overrides = {"num_envs": num_envs, **({"num_threads": env_threads} if env_threads is not None else {})}
    return env_config_with(cfg, load_yaml("teacher", "ppo.yaml")["train_perturbations"], **overrides)


# the PPOConfig fields that set an update's cost: what ours takes from the fine-tuning stage's config
COST_KEYS = ("num_epochs", "num_minibatches")


def stage_ppo(preset: str) -> dict:
    """The fine-tuning stage's epochs and minibatches as the pipeline composes them with ``preset=<preset>``
    (``none``: {}, i.e. the teacher's, as the baseline)."""
    if preset == "none":
        return {}
    with initialize_config_dir(config_dir=pipeline.CONFIG_DIR, version_base="1.3"):
        ppo = compose(config_name="config", overrides=[f"preset={preset}"]).finetune.ppo
    return {k: ppo[k] for k in COST_KEYS}


def fitted_student(env_cfg: dict, spec, num_actions: int, steps: int, seed: int):
    """A fresh HistoryTransformer with the bc defaults, its normaliser fitted on ``steps`` steps of
    every env under uniform random actions (a fresh student has the identity normaliser otherwise)."""
    block = load_yaml("bc", "default.yaml")["transformer"]
    student = build_student("transformer", spec, {**block, "action_dim": num_actions})
    probe = make_env(env_cfg)
    obs = probe.reset(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    seen = []
    for _ in range(steps):
        seen.append(obs[student.cfg.group])
        obs, *_ = probe.step(torch.rand(probe.num_envs, num_actions, generator=gen) * 2 - 1)
    probe.close()
    student.fit_normalizer(torch.cat(seen))  # (steps * N, D)
    return student


class Recorder:
    """The runner's logger: keeps the timing of every iteration."""

    def __init__(self):
        self.rows: list[dict] = []

    def log(self, m: dict, step: int) -> None:
        self.rows.append({"s_per_rollout": m["s_per_rollout"], "s_per_iteration": m["s_per_iteration"]})


class Side:
    """One contender: its env, runner and per-round timings."""

    def __init__(self, name: str, env, policy, ppo_cfg: PPOConfig, run_cfg: RunnerConfig):
        self.name, self.env, self.rec = name, env, Recorder()
        self.runner = OnPolicyRunner(env, policy, ppo_cfg, run_cfg, logger=self.rec)
        self.steps_per_iteration = run_cfg.num_steps_per_env * env.num_envs
        self.rounds: list[dict] = []

    def run(self, iterations: int) -> list[dict]:
        """``iterations`` more PPO iterations (learn continues the same run: env, storage, optimizer,
        carried memory); returns their timing rows."""
        start = len(self.rec.rows)
        self.runner.learn(num_iterations=self.runner.iteration + iterations, progress=False)
        return self.rec.rows[start:]

    def timed(self, iterations: int) -> None:
        rows = self.run(iterations)
        total = sum(r["s_per_iteration"] for r in rows)
        self.rounds.append({"env_steps_per_s": len(rows) * self.steps_per_iteration / total,
                            "s_per_rollout": statistics.median(r["s_per_rollout"] for r in rows),
                            "s_per_update": statistics.median(r["s_per_iteration"] - r["s_per_rollout"] for r in rows)})

    def summary(self) -> dict:
        return {k: statistics.median(r[k] for r in self.rounds) for k in self.rounds[0]}


# (label, function name, file fragment): where each phase of the student's iteration goes (cumulative
# seconds, so a nested entry is a part of the one it sits in)
ROLLOUT_KEYS = [
    ("env.step", "step", "envs/mujoco/vec_env.py"),
    ("student.act (per-step pass)", "act", "rl/student/model.py"),
    ("  _advance", "_advance", "rl/student/model.py"),
    ("  _write (block ends)", "_write", "rl/student/model.py"),
    ("  _fresh (memory pass)", "_fresh", "rl/student/model.py"),
    ("reset_memory", "reset_memory", "rl/student/model.py"),
    ("critic value", "value", "rl/student_actor_critic.py"),
    ("storage.add", "add", "rl/recurrent_storage.py"),
    ("storage.add_memory", "add_memory", "rl/recurrent_storage.py"),
    ("compute_returns", "compute_returns", "rl/storage.py"),
]
UPDATE_KEYS = [
    ("sequence_minibatches", "sequence_minibatches", "rl/recurrent_storage.py"),
    ("  stack_memory", "stack_memory", "rl/recurrent_storage.py"),
    ("  index_memory", "index_memory", "rl/recurrent_storage.py"),
    ("evaluate", "evaluate", "rl/student_actor_critic.py"),
    ("  forward_sequence", "forward_sequence", "rl/student/model.py"),
    ("    _advance (rounds)", "_advance", "rl/student/model.py"),
    ("    _write (block ends)", "_write", "rl/student/model.py"),
    ("    _fresh (memory pass)", "_fresh", "rl/student/model.py"),
    ("    reset_memory", "reset_memory", "rl/student/model.py"),
    ("  critic value", "value", "rl/student_actor_critic.py"),
    ("backward", "backward", "torch/_tensor.py"),
    ("clip_grad_norm_", "clip_grad_norm_", "torch/nn/utils/clip_grad.py"),
    ("optimizer.step", "wrapper", "torch/optim/optimizer.py"),
]


def _table(prof: cProfile.Profile, keys: list, iterations: int) -> dict:
    stats = pstats.Stats(prof).stats
    table = {}
    for label, name, fragment in keys:
        hits = [(v[1], v[3]) for (file, _, fn), v in stats.items() if fn == name and fragment in file]
        if hits:  # (calls, cumulative s)
            table[label] = {"s_per_iteration": sum(h[1] for h in hits) / iterations,
                            "calls_per_iteration": sum(h[0] for h in hits) / iterations}
    total = sum(v[2] for v in stats.values()) / iterations  # every function's own time: the phase's total
    return {"total_s_per_iteration": total, **table}


def profile_student(side: Side, iterations: int) -> dict:
    """cProfile over ``iterations`` of the student's PPO, the rollout and the update apart (seconds per
    iteration in the ROLLOUT_KEYS / UPDATE_KEYS entries), and the padding of the update's lockstep
    rounds: the share of the (B, L) step slots ``_advance`` computed that were real steps."""
    runner, student = side.runner, side.runner.policy.student
    profs = {"rollout": cProfile.Profile(), "update": cProfile.Profile()}
    slots = {"computed": 0, "valid": 0}
    phase = {"now": None}

    def timed(name, fn):
        def call(*a, **k):
            phase["now"] = name
            profs[name].enable()
            try:
                return fn(*a, **k)
            finally:
                profs[name].disable()
                phase["now"] = None
        return call

    advance = student._advance

    def counted(chunk, length, memory, t_idx=None):
        if phase["now"] == "update":
            slots["computed"] += chunk.shape[0] * chunk.shape[1]
            slots["valid"] += int(length.sum())
        return advance(chunk, length, memory, t_idx)

    runner.collect_rollout = timed("rollout", runner.collect_rollout)
    runner.ppo.update = timed("update", runner.ppo.update)
    student._advance = counted
    try:
        side.run(iterations)
    finally:  # the instance attributes shadowed the class's methods: drop them
        del runner.collect_rollout, runner.ppo.update, student._advance
    return {"iterations": iterations, "rollout": _table(profs["rollout"], ROLLOUT_KEYS, iterations),
            "update": _table(profs["update"], UPDATE_KEYS, iterations),
            "update_real_step_share": slots["valid"] / max(1, slots["computed"]),
            "note": "cProfile adds overhead per Python call: shares, not absolute times"}


def build_sides(args) -> tuple[Side, Side, str]:
    """(ours, baseline, where the student came from): two envs of the same config and seed, one RunnerConfig
    for both; the baseline's PPOConfig configs/teacher/ppo.yaml's, ours the same with the fine-tuning stage's
    epochs and minibatches under --preset, then --ours-ppo."""
    env_cfg = env_config(args.env, args.seed, args.num_envs, args.env_threads)
    teacher = OmegaConf.create(load_yaml("teacher", "ppo.yaml"))
    ppo_cfg = PPOConfig(**OmegaConf.to_container(teacher.ppo))
    ours_ppo = replace(ppo_cfg, **{**stage_ppo(args.preset), **args.ours_ppo})  # the stage's cost, then --ours-ppo
    run_cfg = RunnerConfig(num_steps_per_env=args.steps_per_env, seq_len=args.seq_len, seed=args.seed,
                           num_iterations=0, save_every=10 ** 9)
    torch.manual_seed(args.seed)
    env = make_env(env_cfg)
    if args.student is not None:
        student, _ = load_student(args.student, env_name=env.cfg.name, model_kind="transformer")
        student.train()  # load_student hands it over in eval mode; PPO trains it
        origin = str(args.student)
    else:
        student = fitted_student(env_cfg, env.obs_spec, env.num_actions, args.fit_steps, args.seed)
        origin = "fresh (bc defaults), normaliser fitted on random-action steps"
    policy = StudentActorCritic(student, env.obs_spec.dim("privileged"), critic_hidden=list(teacher.critic_hidden))
    base_env = make_env(env_cfg)
    return (Side("ours", env, policy, ours_ppo, run_cfg),
            Side("baseline", base_env, build_policy(base_env, teacher), ppo_cfg, run_cfg), origin)


def ppo_overrides(pairs: list[str]) -> dict:
    """``["num_epochs=2", ...]`` -> {"num_epochs": 2, ...}: keys and types checked against PPOConfig by OmegaConf,
    as the pipeline's own overrides are (ValueError otherwise)."""
    try:
        merged = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PPOConfig), OmegaConf.from_dotlist(pairs)))
    except OmegaConfBaseException as e:
        raise ValueError(f"--ours-ppo {' '.join(pairs)}: {str(e).splitlines()[0]}") from None
    return {key: getattr(merged, key) for key in (pair.partition("=")[0] for pair in pairs)}


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="pick_loose", help="configs/env/<name>.yaml")
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--steps-per-env", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=8, help="ours: steps per stored sequence")
    p.add_argument("--student", type=Path, help="a student.pt (default: a fresh transformer with the bc defaults)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--env-threads", type=int, default=None, help="the env's physics threads (default: its config's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per side first")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--iterations", type=int, default=2, help="iterations per side per round")
    p.add_argument("--fit-steps", type=int, default=16, help="env steps (x num_envs) the normaliser is fitted on")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile N more iterations of ours")
    p.add_argument("--preset", default="full", choices=["full", "quick", "none"],
                   help="ours' epochs and minibatches: the fine-tuning stage's under this preset (none: the teacher's)")
    p.add_argument("--ours-ppo", nargs="*", default=[], metavar="KEY=VALUE",
                   help="ours' PPOConfig fields over the preset's, e.g. num_epochs=2 (default: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        args.ours_ppo = ppo_overrides(args.ours_ppo)
    except ValueError as e:
        p.error(str(e))  # one line, exit 2
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    ours, baseline, origin = build_sides(args)
    env, ppo_cfg = ours.env, ours.runner.ppo.cfg
    sides = [ours, baseline]
    n_params = {s.name: sum(q.numel() for q in s.runner.policy.parameters()) for s in sides}
    base_cfg = baseline.runner.ppo.cfg
    print(f"{env.cfg.name}: {args.num_envs} envs x {args.steps_per_env} steps per iteration, PPO ours "
          f"{ppo_cfg.num_epochs} epochs x {ppo_cfg.num_minibatches} minibatches, baseline {base_cfg.num_epochs} x "
          f"{base_cfg.num_minibatches}, seq_len {args.seq_len}, {args.threads} torch thread(s); "
          f"{args.warmup} warm-up + {args.rounds} rounds x {args.iterations} iterations per side; "
          f"parameters {n_params}; load {load_start}", flush=True)

    for side in sides:
        side.run(args.warmup)  # allocator, autograd caches, Adam state, the env's first resets
    for r in range(args.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):  # flip the order: neither always goes first
            side.timed(args.iterations)
        o, b = ours.rounds[-1], baseline.rounds[-1]
        print(f"round {r}: ours {o['env_steps_per_s']:.0f} steps/s (rollout {o['s_per_rollout']:.3f} s, update "
              f"{o['s_per_update']:.3f} s)  baseline {b['env_steps_per_s']:.0f} steps/s (rollout "
              f"{b['s_per_rollout']:.3f} s, update {b['s_per_update']:.3f} s)  ratio "
              f"{o['env_steps_per_s'] / b['env_steps_per_s']:.2f}", flush=True)
    load_end = os.getloadavg()
    ratios = [o["env_steps_per_s"] / b["env_steps_per_s"] for o, b in zip(ours.rounds, baseline.rounds)]
    profile = profile_student(ours, args.profile) if args.profile > 0 else None
    if profile:
        print(f"ours, cProfile over {args.profile} iterations (s per iteration, cumulative):")
        for phase in ("rollout", "update"):
            print(f"  {phase}: {profile[phase]['total_s_per_iteration']:.3f} s")
            for label, row in profile[phase].items():
                if isinstance(row, dict):
                    print(f"    {label:<30}{row['s_per_iteration']:>8.3f}  ({row['calls_per_iteration']:.0f} calls)")
        print(f"  update: real steps in the lockstep rounds' slots {profile['update_real_step_share']:.0%}")
    for side in sides:
        side.env.close()

    summary = {s.name: s.summary() for s in sides}
    ratio = statistics.median(ratios)
    result = {
        "bench": "finetune_throughput", "env": env.cfg.name, "unit": "env steps/s (rollout + update)",
        "ours": summary["ours"]["env_steps_per_s"], "baseline": summary["baseline"]["env_steps_per_s"],
        "ratio": ratio, "target": TARGET, "target_met": ratio >= TARGET,
        "ours_detail": summary["ours"], "baseline_detail": summary["baseline"],
        "update_over_baseline": summary["ours"]["s_per_update"] / summary["baseline"]["s_per_update"],
        "rollout_over_baseline": summary["ours"]["s_per_rollout"] / summary["baseline"]["s_per_rollout"],
        "ratios": ratios, "rounds": {s.name: s.rounds for s in sides},
        "num_envs": args.num_envs, "steps_per_env": args.steps_per_env, "seq_len": args.seq_len,
        "num_epochs": ppo_cfg.num_epochs, "num_minibatches": ppo_cfg.num_minibatches,
        "preset": args.preset, "ours_ppo_overrides": args.ours_ppo,
        "baseline_num_epochs": baseline.runner.ppo.cfg.num_epochs,
        "warmup": args.warmup, "iterations_per_round": args.iterations, "threads": args.threads,
        "env_threads": env.cfg.num_threads, "student": origin,
        "student_cfg": dict(vars(ours.runner.policy.student.cfg)),
        "parameters": n_params, "loadavg_start": load_start, "loadavg_end": load_end,
        "cpu_count": os.cpu_count(), "profile": profile, "bench_seconds": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ours {result['ours']:.0f} env steps/s, baseline {result['baseline']:.0f}: ratio {ratio:.2f} "
          f"(target {TARGET}); wrote {args.out}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("rounds", "profile")}))


if __name__ == "__main__":
    main()
