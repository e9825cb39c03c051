"""Keep the weights that succeed most often in closed loop, not merely the last ones (PPO's selection).

PPO's training curve reads the stochastic policy on a mix of fresh and expert starts with the
training perturbations on; what collection uses is the deterministic policy from fresh starts. On
StackPickMulti the two drift apart: the warm-started actor succeeded 94.5% deterministically and PPO
then eroded it to 82.8% over 1500 iterations while its training curve stayed flat (README, Results).
So every ``every`` iterations (and once before the first update) the actor's mean action plays
``episodes`` fresh episodes, seeded apart from the final evaluation's seeds so that the reported
number is not the one the choice was made on, and the best weights so far are kept in the checkpoint.

The teacher (an MLP) and the fine-tuned student (a recurrent net inside ``StudentActorCritic``) share
it: ``actor(policy)`` names the network that acts (default: the policy itself), and it plays as
``common.policies.NetworkPolicy`` does everywhere else, its memory and previous action carried and reset
per episode.

Picking the best of many near-equal candidates on one set of episodes overrates it (the winner's curse): on
PickLoose, fine-tuning's 128-episode selection chose weights at 95-99% that scored 91-95% on the evaluation
episodes. With ``keep`` > 1 the selector holds the ``keep`` best candidates, and ``confirm`` plays each of
them again on fresh episodes (seeded apart from the selection's and the evaluation's) and keeps the one with
the most successes over both sets.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from common.evaluate import evaluate, selection_seed
from common.policies import NetworkPolicy


class BestCheckpoint:
    def __init__(self, make_eval_env: Callable[[], object], every: int, episodes: int, seed: int,
                 actor: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                 seed_fn: Callable[[int], int] = selection_seed, keep: int = 1):
        self.make_eval_env, self.every, self.episodes = make_eval_env, every, episodes
        self.actor = actor or (lambda policy: policy)
        self.seed = seed_fn(seed)  # apart from the final evaluation's (common/evaluate.py)
        self.keep = max(1, int(keep))
        self.env = None
        self.best: dict | None = None  # {"iteration", "success_rate", "model"}
        self.candidates: list[dict] = []  # the ``keep`` best so far, best first (ties: the earlier)
        self.history: list[list[float]] = []  # [iteration, success_rate] of every evaluation
        self.confirmation: list[dict] = []  # confirm()'s record, one row per candidate

    def due(self, iteration: int, last_iteration: int) -> bool:
        if self.every <= 0:
            return False
        return iteration % self.every == 0 or iteration == last_iteration

    @torch.no_grad()
    def consider(self, iteration: int, policy) -> dict:
        """Evaluate ``policy``'s mean action; keep its weights if they rank among the ``keep`` best so far
        (ties go to the earlier weights: a later one has to be measurably better)."""
        rate = self._success_rate(policy, self.episodes, self.seed)
        self.history.append([iteration, rate])
        rank = sum(c["success_rate"] >= rate for c in self.candidates)  # after every candidate at least as good
        if rank < self.keep:
            self.candidates.insert(rank, {"iteration": iteration, "success_rate": rate,
                                          "model": copy.deepcopy(policy.state_dict())})
            del self.candidates[self.keep:]
        self.best = self.candidates[0] if self.candidates else None
        return {"selection_iteration": iteration, "selection_success_rate": rate,
                "selected_iteration": self.best["iteration"],
                "selected_success_rate": self.best["success_rate"]}

    def _success_rate(self, policy, episodes: int, seed: int) -> float:
        """``policy``'s mean action in eval mode (its training mode restored) on ``episodes`` from ``seed``."""
        if self.env is None:
            self.env = self.make_eval_env()
        was_training = policy.training
        policy.eval()
        player = NetworkPolicy(self.actor(policy))  # the mean action; memory carried and reset per episode
        result = evaluate(self.env, player.act, player.reset, episodes, seed=seed, progress=False)
        policy.train(was_training)
        return result["success_rate"]

    @torch.no_grad()
    def confirm(self, policy, episodes: int, seed: int) -> list[dict]:
        """Play each kept candidate's mean action on ``episodes`` fresh episodes from ``seed`` (the same ones
        for all) and make ``best`` the one with the most successes over its selection and these episodes (ties:
        the better selection rank). ``policy`` lends its module to the candidates and gets its own weights
        back. Returns (and keeps in ``confirmation``) one row per candidate, in selection rank order."""
        if len(self.candidates) < 2 or episodes <= 0:
            return []
        own = copy.deepcopy(policy.state_dict())
        rows = []
        for c in self.candidates:
            policy.load_state_dict(c["model"])
            rate = self._success_rate(policy, episodes, seed)
            total = round(c["success_rate"] * self.episodes) + round(rate * episodes)
            rows.append({"iteration": c["iteration"], "success_rate": c["success_rate"],
                         "confirm_success_rate": rate, "success_rate_both": total / (self.episodes + episodes)})
        policy.load_state_dict(own)
        winner = max(range(len(rows)), key=lambda i: (rows[i]["success_rate_both"], -i))
        self.best = self.candidates[winner]
        self.confirmation = rows
        return rows

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def state_dict(self) -> dict:
        return {"best": self.best, "history": self.history, "candidates": self.candidates}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.history = state["best"], [list(h) for h in state["history"]]
        # a checkpoint from before ``keep`` holds its best only
        self.candidates = list(state.get("candidates") or ([self.best] if self.best is not None else []))
