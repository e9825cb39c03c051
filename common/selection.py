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
                 seed_fn: Callable[[int], int] = selection_seed):
        self.make_eval_env, self.every, self.episodes = make_eval_env, every, episodes
        self.actor = actor or (lambda policy: policy)
        self.seed = seed_fn(seed)  # apart from the final evaluation's (common/evaluate.py)
        self.env = None
        self.best: dict | None = None  # {"iteration", "success_rate", "model"}
        self.history: list[list[float]] = []  # [iteration, success_rate] of every evaluation

    def due(self, iteration: int, last_iteration: int) -> bool:
        if self.every <= 0:
            return False
        return iteration % self.every == 0 or iteration == last_iteration

    @torch.no_grad()
    def consider(self, iteration: int, policy) -> dict:
        """Evaluate ``policy``'s mean action; keep its weights if it beats the best so far (ties go to
        the earlier weights: a later one has to be measurably better)."""
        if self.env is None:
            self.env = self.make_eval_env()
        was_training = policy.training
        policy.eval()
        player = NetworkPolicy(self.actor(policy))  # the mean action; memory carried and reset per episode
        result = evaluate(self.env, player.act, player.reset, self.episodes, seed=self.seed, progress=False)
        policy.train(was_training)
        rate = result["success_rate"]
        self.history.append([iteration, rate])
        if self.best is None or rate > self.best["success_rate"]:
            self.best = {"iteration": iteration, "success_rate": rate,
                         "model": copy.deepcopy(policy.state_dict())}
        return {"selection_iteration": iteration, "selection_success_rate": rate,
                "selected_iteration": self.best["iteration"],
                "selected_success_rate": self.best["success_rate"]}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def state_dict(self) -> dict:
        return {"best": self.best, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.history = state["best"], [list(h) for h in state["history"]]
