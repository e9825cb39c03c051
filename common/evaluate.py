"""Closed-loop evaluation of a policy on a batched env: every env runs until its first episode ends."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from rich.progress import Progress

from common.rollout import first_episodes

_KEYS = ("success", "return", "length", "attempts", "object_lost", "sim_unstable")


def evaluate(env, act: Callable[[dict], torch.Tensor], reset: Callable[[torch.Tensor], None],
             num_episodes: int, seed: int, progress: bool = True) -> dict:
    """Run ``num_episodes`` episodes (in rounds of ``env.num_envs``) and summarise them.

    ``act(obs) -> action`` and ``reset(done_mask)`` are the policy's two calls. Episodes are the first
    episode of each env in a round, seeded from ``seed`` and the round, so the result is reproducible.
    A last, partial round keeps its lowest-numbered envs, not its first finishers: those would
    favour short episodes, i.e. successes.
    """
    N = env.num_envs
    rounds = -(-num_episodes // N)
    episodes: list[dict] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=num_episodes)
        for r in range(rounds):
            keep = min(N, num_episodes - len(episodes))
            ep = first_episodes(env, act, reset, seed=seed + 1000003 * r,
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
    """Markdown table: one row per (policy device, sim device)."""
    head = "| policy device | sim device | Successes | Mean reward | Mean episode length | Mean attempts to success |\n"
    head += "|---|---|---|---|---|---|\n"
    for r in rows:
        head += (f"| {r['policy_device']} | {r['sim_device']} | {r['successes']}/{r['episodes']} "
                 f"({100 * r['success_rate']:.1f}%) | {r['mean_reward']:.2f} | {r['mean_episode_length']:.1f} "
                 f"| {r['mean_attempts_to_success']:.2f} |\n")
    return head
