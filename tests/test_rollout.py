"""The shared first-episode loop (common/rollout.py) and evaluation built on it."""

import numpy as np

from common.evaluate import evaluate
from common.rollout import first_episodes
from tests.toy_env import PointReach


def toward_origin(obs):
    return -2.0 * obs["privileged"]  # reaches the origin in a few steps, sooner from nearer starts


def test_first_episodes_reports_each_envs_first_episode_only():
    env = PointReach(num_envs=16, horizon=30)
    ended_at = np.full(16, -1)
    steps = [0]

    def book(step):
        steps[0] += 1
        ended_at[step.ended] = steps[0]

    ep = first_episodes(env, toward_origin, seed=4, on_step=book)
    assert ep["finished"].all() and ep["success"].all()
    assert np.array_equal(ep["length"], ended_at)  # each env's first end, booked once
    assert len(set(ep["length"].tolist())) > 1  # envs end at different steps: later episodes kept going


def test_a_partial_evaluation_round_keeps_the_lowest_envs_not_the_first_finishers():
    env = PointReach(num_envs=16, horizon=30)
    ep = first_episodes(env, toward_origin, seed=4)
    result = evaluate(env, toward_origin, lambda done: None, num_episodes=5, seed=4, progress=False)
    assert result["episodes"] == 5
    assert result["mean_episode_length"] == ep["length"][:5].mean()
    assert result["mean_episode_length"] > np.sort(ep["length"])[:5].mean()  # first finishers: shorter
