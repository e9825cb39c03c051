"""Closed-loop evaluation of a policy on a batched env: every env runs until its first episode ends.

The seeds: ``evaluate(..., seed)`` resets round r at ``seed + 1000003 r``; every env's episode seed
derives from that base seed, its index and its episode counter (``envs/rng.py``). The final
evaluations (the teacher stage's table and ``stage=eval``) start at ``evaluation_seed(seed)``, the
teacher's weight selection at ``selection_seed(seed)``, the student's at
``student_selection_seed(seed)``, the fine-tuned student's at ``finetune_selection_seed(seed)`` and its
confirmation of the best candidates at ``finetune_confirm_seed(seed)``;
training uses the run's seed itself and small offsets of it (+1, +2: the runner's generators, +211:
the warm start's expert pairs, +100 + 1000 r: the curriculum's expert states, +307: fine-tuning's
demo-state resets). They stay apart for one run's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from rich.progress import Progress

from common.rollout import first_episodes
from envs import env_config_with

_KEYS = ("success", "return", "length", "attempts", "object_lost", "sim_unstable")
ROUND_STRIDE = 1000003  # evaluate(): round r resets at seed + ROUND_STRIDE * r
EVAL_SEED_OFFSET = 7919
SELECTION_SEED_OFFSET = 31337
STUDENT_SELECTION_SEED_OFFSET = 52711
FINETUNE_SELECTION_SEED_OFFSET = 70423
FINETUNE_CONFIRM_SEED_OFFSET = 90599


def evaluation_seed(seed: int) -> int:
    """The base seed of every final evaluation: the teacher stage's and ``stage=eval``'s."""
    return int(seed) + EVAL_SEED_OFFSET


def selection_seed(seed: int) -> int:
    """The base seed of model selection in closed loop (``teacher.select``), apart from the final one's."""
    return int(seed) + SELECTION_SEED_OFFSET


def student_selection_seed(seed: int) -> int:
    """The base seed of behaviour cloning's closed-loop selection (``bc.eval_every``), apart from the
    final evaluation's and the teacher selection's."""
    return int(seed) + STUDENT_SELECTION_SEED_OFFSET


def finetune_selection_seed(seed: int) -> int:
    """The base seed of fine-tuning's closed-loop selection (``finetune.select``), apart from the others."""
    return int(seed) + FINETUNE_SELECTION_SEED_OFFSET


def finetune_confirm_seed(seed: int) -> int:
    """The base seed on which fine-tuning replays its best candidates (``finetune.select.confirm_top``)."""
    return int(seed) + FINETUNE_CONFIRM_SEED_OFFSET


def evaluation_env_config(cfg, num_episodes: int) -> dict:
    """The env of a final evaluation: ``cfg.env`` as configured, without any stage's training
    perturbations, with ``eval.perturbations`` merged in (off by default) and
    ``min(num_episodes, eval.num_envs)`` envs (the episodes' seeds depend on that number only when
    it is below ``num_episodes``)."""
    return env_config_with(cfg.env, cfg.eval.perturbations, num_envs=min(int(num_episodes), int(cfg.eval.num_envs)))


def evaluate_policy(env, policy, num_episodes: int, seed: int, progress: bool = True) -> dict:
    """``evaluate`` for a ``common.policies.Policy``, with the devices it ran on."""
    result = evaluate(env, policy.act, policy.reset, num_episodes, seed, progress)
    result.update(policy_device=policy.device.type, simulator=getattr(env, "simulator", "mujoco"),
                  sim_device=str(getattr(env, "sim_device", env.device)))
    return result


def device_pairs() -> list[tuple[str, str]]:
    """The (policy device, sim device) pairs this machine has: the MuJoCo sim runs on the CPU."""
    return [("cpu", "cpu")] + ([("cuda", "cpu")] if torch.cuda.is_available() else [])


def device_note() -> str:
    """What the device columns cover on this machine (printed under every table)."""
    cuda = ("cuda is available: the policies run on cpu and on cuda (the scripted expert on cpu only)"
            if torch.cuda.is_available() else "cuda is not available on this machine: cpu/cpu only")
    return (f"{cuda}; the MuJoCo sim runs on the CPU only (sim device cpu), Isaac Lab's on env.sim_device "
            f"(simulator column: eval.simulators).")


def evaluate(env, act: Callable[[dict], torch.Tensor], reset: Callable[[torch.Tensor], None],
             num_episodes: int, seed: int, progress: bool = True) -> dict:
    """Run ``num_episodes`` episodes (in rounds of ``env.num_envs``) and summarise them.

    ``act(obs) -> action`` and ``reset(done_mask)`` are the policy's two calls. Episodes are the first
    episode of each env in a round, seeded from ``seed`` and the round, so the result is reproducible.
    A last, partial round keeps its lowest-numbered envs, not its first finishers: those would
    favour short episodes, i.e. successes.

    The policy acts with one torch thread (restored afterwards): a CPU matmul's rounding depends on
    the thread count, and the env turns a last-bit difference into another episode (a tiny teacher
    scored differently at 1 and 2 threads), so the numbers would depend on a process setting.
    """
    with one_thread():
        return _evaluate(env, act, reset, num_episodes, seed, progress)


@contextmanager
def one_thread():
    """torch on one intra-op thread inside, the previous count restored after (see ``evaluate``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _evaluate(env, act, reset, num_episodes: int, seed: int, progress: bool) -> dict:
    N = env.num_envs
    rounds = -(-num_episodes // N)
    episodes: list[dict] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=num_episodes)
        for r in range(rounds):
            keep = min(N, num_episodes - len(episodes))
            ep = first_episodes(env, act, reset, seed=seed + ROUND_STRIDE * r,
                                on_step=lambda step, keep=keep: bar.advance(task, int(step.ended[:keep].sum())))
            episodes += [{k: ep[k][i].item() for k in _KEYS} for i in range(keep)]
    success = np.array([e["success"] for e in episodes])
    attempts = np.array([e["attempts"] for e in episodes])
    return {
        "episodes": len(episodes),
        "successes": int(success.sum()),
        "success_rate": float(success.mean()),
        "mean_reward": float(np.mean([e["return"] for e in episodes])),
        "mean_episode_length": float(np.mean([e["length"] for e in episodes])),
        "mean_attempts_to_success": float(attempts[success].mean()) if success.any() else float("nan"),
        "with_retry_share": float((attempts[success] > 1).mean()) if success.any() else 0.0,
        "object_lost": int(sum(e["object_lost"] for e in episodes)),
        "sim_unstable": int(sum(e["sim_unstable"] for e in episodes)),
    }


def format_table(rows: list[dict]) -> str:
    """Markdown table: one row per (policy device, sim device), after a policy column when the rows
    name their policy (``policy``; ``label`` too: what the policy is, e.g. "LSTM student")."""
    named = all("policy" in r for r in rows)
    labelled = named and all("label" in r for r in rows)
    # A simulator column where a row is not MuJoCo's (eval.simulators, or env.simulator=isaaclab)
    sims = any(r.get("simulator", "mujoco") != "mujoco" for r in rows)
    head = ("| what " if labelled else "") + ("| policy " if named else "") + ("| simulator " if sims else "")
    head += ("| policy device | sim device | Successes | Mean reward | Mean episode length "
             "| Mean attempts to success |\n")
    head += "|---" * (6 + named + labelled + sims) + "|\n"
    for r in rows:
        head += (f"| {r['label']} " if labelled else "") + (f"| {r['policy']} " if named else "")
        head += f"| {r.get('simulator', 'mujoco')} " if sims else ""
        head += (f"| {r['policy_device']} | {r['sim_device']} | {r['successes']}/{r['episodes']} "
                 f"({100 * r['success_rate']:.1f}%) | {r['mean_reward']:.2f} | {r['mean_episode_length']:.1f} "
                 f"| {r['mean_attempts_to_success']:.2f} |\n")
    return head
