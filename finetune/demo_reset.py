"""Resets to demonstration states for PPO fine-tuning (``finetune.demo_reset_prob``).

A freshly reset env starts, with probability ``prob``, from the stored simulator state of a random
step of a random episode of the BC dataset ("restart in random points of the MDP"): practice then
also starts at the hard points of the task, among them the states just after a failed attempt,
which a fresh start reaches only after the policy has failed on its own.

Which state, which step counter. ``data/sim_state[t]`` is the state *before* step t of its episode
(collect/ snapshots it before acting), so its step counter reads t and its attempt counter is the
attempt after step t - 1, i.e. ``data/attempt[t - 1]`` (0 at t = 0); ``data/attempt[t]`` is the
attempt after step t. An episode's last state is left out: the demonstrator succeeded from it in one
step, so it teaches nothing, and the episode ends right away.

The step counter travels with the state and is kept (``set_state`` restores it; only the env's own
episode count and base seed stay its own): a start from step 150 of a 200-step limit times out
50 steps later. Why not restart it at 0: the stored state is then exactly the demonstration's
(observations and the env's per-step draws of perturbations and occlusion, which are keyed by
(episode seed, step), continue as in the demonstration); the demonstrator succeeded within the time
left, so success stays reachable; an episode never runs past the task's limit, so episode lengths
and returns stay comparable with fresh ones; and the runner bootstraps the time-out as usual. A
restart at 0 would give a late start a whole extra episode of time and make each late failure cost
``episode_length`` env steps (teacher/curriculum.py saw how failed starts idling to the limit skew
the success reading).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from datasets.store import EpisodeStore
from envs import env_config_dict
from envs.base import ConfigError


@dataclass
class DemoStates:
    """The startable states of a dataset: every step but each episode's last, episode-major."""

    states: torch.Tensor  # (P, S) float64 full env states
    episode: torch.Tensor  # (P,) int64 index of the state's episode in the store
    step: torch.Tensor  # (P,) int64 step of the state within its episode (its step counter)
    attempt: torch.Tensor  # (P,) int64 attempt counter of the state; > 0: after a failed attempt
    offsets: torch.Tensor  # (E',) int64 first row of each startable episode (one with >= 2 steps)
    counts: torch.Tensor  # (E',) int64 its startable states (length - 1)

    def __len__(self) -> int:
        return len(self.states)


def load_demo_states(path, env) -> DemoStates:
    """The startable states of the store at ``path``, checked against ``env``. Reads
    ``data/sim_state``, ``data/attempt`` and the episode ends only (never the observations)."""
    store = EpisodeStore.open(path)
    names = store.data_names()
    for name in ("sim_state", "attempt"):
        if name not in names:
            raise ConfigError(f"dataset {path} has no data/{name}; re-collect it with this code (stage=collect)")
    made_for = store.attrs.get("env")
    ours = getattr(getattr(env, "cfg", None), "name", None)
    if made_for is not None and ours is not None and made_for != ours:
        raise ConfigError(f"dataset {path} was collected on {made_for}, fine-tuning runs {ours}; "
                          f"point finetune at a {ours} dataset or set env to {made_for}")
    sim = env_config_dict(store.attrs.get("env_cfg") or {})["simulator"]  # older stores record none: mujoco
    ours_sim = getattr(env, "simulator", "mujoco")
    if sim != ours_sim:
        raise ConfigError(f"dataset {path} holds {sim} states, fine-tuning runs in {ours_sim}: a simulator's state "
                          f"does not start the other; set finetune.demo_reset_prob=0 (the imitation term still "
                          f"uses the demonstrations) or collect them in {ours_sim}")
    width = store.array("data/sim_state").shape[1]
    if width != env.state_size:
        raise ConfigError(f"dataset {path} stores states of {width} values, this {ours or 'env'} has "
                          f"{env.state_size} (another task, scene or env version); re-collect it with this env")
    ends = store.episode_ends  # (E,)
    starts = np.concatenate([[0], ends])[:-1].astype(np.int64)  # (E,), also for E = 0
    lengths = ends - starts
    keep = np.ones(int(ends[-1]) if len(ends) else 0, bool)  # (T,) every step but each episode's last
    keep[ends[lengths > 0] - 1] = False
    sim_state = store.read("data/sim_state")  # (T, S) float64
    attempt_after = store.read("data/attempt").astype(np.int64)  # (T,) attempt after each step
    attempt_before = np.concatenate([[0], attempt_after[:-1]])  # (T,) the state's own counter
    attempt_before[starts[lengths > 0]] = 0  # an episode's first state: no attempt failed yet
    episode = np.repeat(np.arange(len(ends), dtype=np.int64), lengths)  # (T,)
    step = np.arange(len(keep), dtype=np.int64) - np.repeat(starts, lengths)  # (T,)
    counts = np.maximum(lengths - 1, 0)
    startable = counts > 0
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    as_t = torch.from_numpy
    return DemoStates(states=as_t(np.ascontiguousarray(sim_state[keep], dtype=np.float64)),
                      episode=as_t(episode[keep]), step=as_t(step[keep]), attempt=as_t(attempt_before[keep]),
                      offsets=as_t(offsets[startable]), counts=as_t(counts[startable].astype(np.int64)))


class DemoStateResets:
    """``on_reset`` hook of rl/runner.OnPolicyRunner: starts a share ``prob`` of resets from demo states.

    ``__call__(env, ids, success)`` is given the envs that just finished an episode and whether each
    succeeded; it books each outcome against where that episode started (demo state or fresh), then
    sets each of those envs to a demo state with probability ``prob`` and returns True if it set any.
    ``start(env, ids)`` sets given envs to demo states now, whatever ``prob`` (e.g. the leaders of
    a group rollout)."""

    def __init__(self, states: DemoStates, prob: float, seed: int, num_envs: int, window: int = 200):
        prob = float(prob)
        if not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
            raise ConfigError(f"finetune.demo_reset_prob={prob} is not a probability; set it in [0, 1] (0: off)")
        if prob > 0 and len(states.counts) == 0:
            raise ConfigError("finetune.demo_reset_prob > 0 but the dataset has no episode longer than one step; "
                              "collect a dataset or set finetune.demo_reset_prob=0")
        self.demos, self.prob = states, prob
        self.gen = torch.Generator().manual_seed(int(seed))
        self.started_from = torch.full((num_envs,), -1, dtype=torch.int64)  # row in demos.states; -1 fresh
        self.reset_was_demo: deque = deque(maxlen=window)  # per on_reset decision: started from a demo state
        self.demo_outcomes: deque = deque(maxlen=window)
        self.fresh_outcomes: deque = deque(maxlen=window)
        self.demo_after_failure: deque = deque(maxlen=window)  # per demo start: attempt > 0

    def _book(self, ids: torch.Tensor, success: torch.Tensor) -> None:
        for i, ok in zip(ids.tolist(), success.tolist()):
            (self.demo_outcomes if int(self.started_from[i]) >= 0 else self.fresh_outcomes).append(bool(ok))

    def _draw(self, k: int) -> torch.Tensor:
        """(k,) rows of demos.states: a uniform episode, then a uniform startable step of it."""
        counts = self.demos.counts
        episode = torch.randint(0, len(counts), (k,), generator=self.gen)
        u = torch.rand(k, generator=self.gen, dtype=torch.float64)
        step = torch.minimum((u * counts[episode]).long(), counts[episode] - 1)  # u < 1, the min guards rounding
        return self.demos.offsets[episode] + step

    def _apply(self, env, ids: torch.Tensor, rows: torch.Tensor) -> None:
        # keep_episode_counter: the env's own later episodes still come from its own seed stream
        env.set_state(ids, self.demos.states[rows], keep_episode_counter=True)
        self.started_from[ids] = rows
        self.demo_after_failure.extend((self.demos.attempt[rows] > 0).tolist())

    def __call__(self, env, ids: torch.Tensor, success: torch.Tensor) -> bool:
        ids = torch.as_tensor(ids).cpu().reshape(-1)
        self._book(ids, torch.as_tensor(success).cpu().reshape(-1))
        self.started_from[ids] = -1
        if self.prob <= 0 or len(ids) == 0:
            self.reset_was_demo.extend([False] * len(ids))
            return False
        # Draw picks and rows for every id, picked or not: the generator advances by the same amount
        # whatever the outcome, so a resumed run (state_dict) continues the same sequence.
        pick = torch.rand(len(ids), generator=self.gen) < self.prob  # (K,) bool
        rows = self._draw(len(ids))  # (K,)
        self.reset_was_demo.extend(pick.tolist())
        if not pick.any():
            return False
        self._apply(env, ids[pick], rows[pick])
        return True

    def start(self, env, ids) -> torch.Tensor:
        """Set envs ``ids`` to demo states now (whatever ``prob``); their outcomes book as demo starts.
        Returns the chosen rows of ``demos.states``, (K,) int64. Does not count in ``demo_start_share``,
        which measures the on_reset decisions."""
        ids = torch.as_tensor(ids).cpu().reshape(-1)
        if len(self.demos.counts) == 0:
            raise ConfigError("the dataset has no episode longer than one step to start from; collect a dataset")
        rows = self._draw(len(ids))
        if len(ids):
            self._apply(env, ids, rows)
        return rows

    def start_groups(self, env, leader_ids) -> None:
        """The ``group_start`` hook of advantage=group: each group leader starts from a demo state with
        probability ``prob`` (the rest keep their fresh episode); the group then copies its leader."""
        ids = torch.as_tensor(leader_ids).cpu().reshape(-1)
        pick = torch.rand(len(ids), generator=self.gen) < self.prob  # (G,) bool
        self.start(env, ids[pick])

    def stats(self) -> dict:
        rate = (lambda d: float(np.mean(d)) if d else float("nan"))  # nan: nothing booked yet
        return {"demo_start_share": rate(self.reset_was_demo), "demo_start_success_rate": rate(self.demo_outcomes),
                "fresh_success_rate": rate(self.fresh_outcomes),
                "demo_start_after_failure_share": rate(self.demo_after_failure)}

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "started_from": self.started_from.clone(),
                "reset_was_demo": list(self.reset_was_demo), "demo_outcomes": list(self.demo_outcomes),
                "fresh_outcomes": list(self.fresh_outcomes), "demo_after_failure": list(self.demo_after_failure)}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.started_from = state["started_from"].clone()
        for name in ("reset_was_demo", "demo_outcomes", "fresh_outcomes", "demo_after_failure"):
            window = getattr(self, name)
            window.clear()  # replace, not extend: loading into a used hook must not mix two runs
            window.extend(bool(x) for x in state[name])
