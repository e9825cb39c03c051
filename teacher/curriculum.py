"""Reverse curriculum from the scripted expert's successful episodes.

Episodes start from states of the expert's episodes, chosen by how many steps the expert still
needed to succeed from them ("steps to go"). Starts are drawn from a band just inside a frontier:
``[frontier - band, frontier]`` steps to go. When episodes started in the band succeed often enough,
the frontier moves back by ``advance`` steps, until it covers whole episodes; a share of resets stays
fresh throughout, so the policy always also meets the real task and its success is measured alone
(``fresh_success_rate``). Fresh episodes that fail run to the time limit, so early on they would take
most of the env steps; their share grows with the frontier, from a little up to ``1 - share`` once
the frontier reaches the median expert episode.

Why: on the multi-cube stacking task a uniform choice of expert states left PPO at 0-7% success.
Success sits at the end of a long sequence (grasp, lift, carry, place, release, twice); starting
just before success and moving back as the policy learns keeps the learning signal where the policy
is about to fail (Salimans & Chen 2018, "Learning Montezuma's Revenge from a single demonstration").
With ``adaptive=False`` the frontier starts at the longest episode and the band covers everything:
uniform expert-state resets.

An expert start gets a time budget of ``budget_factor * steps_to_go + budget_extra`` steps (its step
counter is moved forward; the episode then times out and is bootstrapped as usual). Without it a
failed start idles to the episode limit: it costs hundreds of env steps, and since successes end
early and failures late, the band's success rate over finished episodes reads too high (a probe
advanced the frontier on a reading of 0.65 while the rate was nearer 0.3).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from common.rollout import first_episodes
from envs.scripted import ScriptedExpert


@dataclass
class ExpertStatePool:
    states: torch.Tensor  # (P, S) full env states of successful expert episodes
    steps_to_go: torch.Tensor  # (P,) int64 steps the expert still needed from each state to succeed
    lengths: torch.Tensor  # (E,) int64 lengths of the successful episodes the states come from

    def __len__(self) -> int:
        return len(self.states)


def expert_state_pool(env, seed: int, rounds: int = 1) -> ExpertStatePool:
    """States of ``rounds`` episodes per env of the scripted expert, kept only from successes (time-major)."""
    expert = ScriptedExpert.for_env(env)
    states, to_go, lengths = [], [], []
    for r in range(rounds):
        snapshots, owners = [], []

        def snapshot(alive: np.ndarray, owners=owners, snapshots=snapshots) -> None:
            owners.append(np.nonzero(alive)[0])
            snapshots.append(env.get_state(owners[-1]))

        ep = first_episodes(env, expert.act, expert.reset, seed=seed + 1000 * r, before_step=snapshot)
        success, length = ep["success"], ep["length"]
        lengths.append(torch.from_numpy(length[success]))
        for t, (states_t, owner) in enumerate(zip(snapshots, owners)):
            keep = success[owner]
            states.append(states_t[keep])
            to_go.append(torch.from_numpy(length[owner[keep]] - t))
    return ExpertStatePool(torch.cat(states), torch.cat(to_go), torch.cat(lengths))


class ReverseCurriculum:
    """``on_reset`` hook of the runner: picks the start of each freshly reset env.

    ``__call__(env, ids, success)`` is given the envs that just finished an episode and whether each
    succeeded; it books the outcome against where that episode started, then sets the state of a
    share of them (returns True if it set any)."""

    def __init__(self, pool: ExpertStatePool, share: float, seed: int, num_envs: int, adaptive: bool = True,
                 start: int = 10, band: int = 40, advance: int = 10, advance_at: float = 0.6,
                 min_episodes: int = 64, window: int = 200, budget_factor: float = 2.0, budget_extra: int = 20):
        self.pool, self.share, self.adaptive = pool, share, adaptive
        self.longest = int(pool.steps_to_go.max()) if len(pool) else 0
        self.median_length = int(pool.lengths.float().median()) if len(pool) else 1
        self.frontier = min(start, self.longest) if adaptive else self.longest
        self.band = band
        self.advance, self.advance_at, self.min_episodes = advance, advance_at, min_episodes
        self.budget_factor, self.budget_extra = budget_factor, budget_extra
        self.gen = torch.Generator().manual_seed(seed)
        self.started_from = torch.full((num_envs,), -1, dtype=torch.int64)  # steps to go at the start; -1 fresh
        self.band_outcomes: deque = deque(maxlen=min_episodes)
        self.fresh_outcomes: deque = deque(maxlen=window)
        self.expert_outcomes: deque = deque(maxlen=window)

    def _book(self, ids: torch.Tensor, success: torch.Tensor) -> None:
        for i, ok in zip(ids.tolist(), success.tolist()):
            start = int(self.started_from[i])
            if start < 0:
                self.fresh_outcomes.append(ok)
                continue
            self.expert_outcomes.append(ok)
            if start > self._band_low():
                self.band_outcomes.append(ok)
        done_with_band = len(self.band_outcomes) >= self.min_episodes
        if self.adaptive and self.frontier < self.longest and done_with_band and \
                np.mean(self.band_outcomes) >= self.advance_at:
            self.frontier = min(self.frontier + self.advance, self.longest)
            self.band_outcomes.clear()

    def __call__(self, env, ids: torch.Tensor, success: torch.Tensor) -> bool:
        self._book(ids, success)
        self.started_from[ids] = -1
        if self.share <= 0 or len(self.pool) == 0:
            return False
        to_go = self.pool.steps_to_go
        in_band = torch.nonzero((to_go <= self.frontier) & (to_go > self._band_low())).flatten()
        if len(in_band) == 0:
            return False
        pick = torch.rand(len(ids), generator=self.gen) < self.expert_share()
        chosen = in_band[torch.randint(0, len(in_band), (len(ids),), generator=self.gen)]
        if not pick.any():
            return False
        env.set_state(ids[pick], self.pool.states[chosen[pick]], keep_episode_counter=True)
        self.started_from[ids[pick]] = to_go[chosen[pick]]
        if self.adaptive:
            budget = (self.budget_factor * to_go[chosen[pick]].double()).long() + self.budget_extra
            steps = env.episode_length_buf.clone()
            steps[ids[pick]] = torch.maximum(steps[ids[pick]], env.max_episode_length - budget)
            env.episode_length_buf = steps
        return True

    def _band_low(self) -> int:
        """Starts come from (low, frontier] steps to go; once the frontier covers every episode, from all."""
        return 0 if self.frontier >= self.longest else self.frontier - self.band

    def expert_share(self) -> float:
        """Probability that a reset starts from an expert state (the rest start fresh)."""
        if not self.adaptive:
            return self.share
        covered = min(1.0, self.frontier / self.median_length)
        return 1.0 - (1.0 - self.share) * covered

    def stats(self) -> dict:
        rate = (lambda d: float(np.mean(d)) if d else float("nan"))  # nan: nothing booked yet
        out = {"fresh_success_rate": rate(self.fresh_outcomes), "expert_start_success_rate": rate(self.expert_outcomes),
               "curriculum_expert_share": self.expert_share()}
        if self.adaptive:  # uniform starts have no frontier (it sat at the longest episode, a flat line)
            out.update(curriculum_frontier=self.frontier, curriculum_longest=self.longest,
                       band_success_rate=rate(self.band_outcomes))
        return out

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "frontier": self.frontier, "started_from": self.started_from.clone(),
                "band_outcomes": list(self.band_outcomes), "fresh_outcomes": list(self.fresh_outcomes),
                "expert_outcomes": list(self.expert_outcomes)}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.frontier = int(state["frontier"])
        self.started_from = state["started_from"].clone()
        self.band_outcomes.extend(bool(x) for x in state["band_outcomes"])
        self.fresh_outcomes.extend(bool(x) for x in state["fresh_outcomes"])
        self.expert_outcomes.extend(bool(x) for x in state["expert_outcomes"])
