"""Run a policy on a batched env until every env's first episode has ended.

The one loop behind closed-loop evaluation, the curriculum's expert-state pool, collection and the
task tests. Later episodes (envs auto-reset) are stepped but not reported: each env contributes its first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Step:
    """One step of the loop, as ``on_step`` sees it."""

    obs: dict  # groups of (N, D): the observation acted on
    action: torch.Tensor  # (N, A) the raw action the policy returned
    reward: torch.Tensor  # (N,)
    done: torch.Tensor  # (N,) bool
    extras: dict
    alive: np.ndarray  # (N,) bool: envs in their first episode during this step
    ended: np.ndarray  # (N,) bool: envs whose first episode ended at this step


def first_episodes(env, act: Callable[[dict], torch.Tensor], reset: Callable[[torch.Tensor], None] | None = None,
                   seed: int | None = None, max_steps: int | None = None,
                   before_step: Callable[[np.ndarray], None] | None = None,
                   on_step: Callable[[Step], bool | None] | None = None,
                   track: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Reset ``env`` (with ``seed`` when given), then step ``act(obs) -> action`` until each env's first
    episode ended or ``max_steps`` (default ``env.max_episode_length``) steps passed.

    ``reset(done_mask)``: the policy's own reset, told which envs start a new episode (all at first).
    ``before_step(alive)``: called before each step with the (N,) bool mask of envs still in their
    first episode (e.g. to snapshot their states). ``on_step(step)``: after each step (``Step``); a
    true return stops the loop there. ``track``: (N,) bool, the envs whose first episode counts (the
    others step along, e.g. a resumed collection's slots already stored); default all.

    Returns (N,) arrays of each env's first episode: ``finished`` (bool), ``success``, ``object_lost``,
    ``sim_unstable``, ``touched`` (bool; ``touched`` False where the env does not report it),
    ``return`` (float64), ``length``, ``attempts`` (int64). Unfinished envs keep zeros.
    """
    N = env.num_envs
    obs = env.reset() if seed is None else env.reset(seed=seed)
    if reset is not None:
        reset(torch.ones(N, dtype=torch.bool))
    out = {k: np.zeros(N, bool) for k in ("finished", "success", "object_lost", "sim_unstable", "touched")}
    out.update({"return": np.zeros(N), "length": np.zeros(N, np.int64), "attempts": np.zeros(N, np.int64)})
    untracked = np.zeros(N, bool) if track is None else ~np.asarray(track, bool)
    for _ in range(max_steps if max_steps is not None else env.max_episode_length):
        alive = ~(out["finished"] | untracked)
        if not alive.any():
            break
        if before_step is not None:
            before_step(alive)
        action = act(obs)
        next_obs, reward, done, extras = env.step(action)
        if reset is not None:
            reset(done)
        ended = done.cpu().numpy() & alive
        if ended.any():
            ep, failure = extras["episode"], extras.get("failure", {})
            values = {"success": extras["success"], "return": ep["return"], "length": ep["length"],
                      "attempts": ep["attempts"], "object_lost": failure.get("object_lost"),
                      "sim_unstable": failure.get("sim_unstable"), "touched": ep.get("touched")}
            for k, v in values.items():
                if v is not None:
                    out[k][ended] = v.cpu().numpy()[ended]
            out["finished"] |= ended
        if on_step is not None and on_step(Step(obs, action, reward, done, extras, alive, ended)):
            break
        obs = next_obs
    return out
