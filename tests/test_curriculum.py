"""The teacher's reverse curriculum: the expert-state pool, where starts come from, when the frontier
moves, how the fresh share grows, and that its state round-trips for resume."""

import json

import torch

from teacher.curriculum import ExpertStatePool, ReverseCurriculum, expert_state_pool


class RecordingEnv:
    """Stands in for a VecEnv: remembers which pool states were set on which envs."""

    max_episode_length = 300

    def __init__(self, num_envs):
        self.num_envs = num_envs
        self.set_calls = []
        self.episode_length_buf = torch.zeros(num_envs, dtype=torch.long)

    def set_state(self, ids, states, keep_episode_counter=False):
        assert keep_episode_counter
        self.set_calls.append((ids.clone(), states.clone()))
        self.episode_length_buf[ids] = 0  # a pool state taken at the episode's first step


def toy_pool(lengths=(50, 80, 100)):
    """One state per step of each episode; a state's single value is its steps to go."""
    to_go = torch.cat([torch.arange(n, 0, -1) for n in lengths])
    return ExpertStatePool(to_go[:, None].double(), to_go, torch.tensor(lengths))


def finish(curriculum, env, ids, success):
    ids = torch.as_tensor(ids)
    return curriculum(env, ids, torch.full((len(ids),), success))


def test_expert_state_pool_counts_steps_to_go_of_successful_expert_episodes(make):
    env = make("lift", num_envs=4)
    pool = expert_state_pool(env, seed=3)
    assert len(pool.lengths) >= 3  # the scripted expert succeeds on Lift
    assert len(pool) == int(pool.lengths.sum())
    # every episode contributes exactly one state with each number of steps to go, 1..length
    assert int((pool.steps_to_go == 1).sum()) == len(pool.lengths)
    assert int(pool.steps_to_go.max()) == int(pool.lengths.max())
    # an episode's first state (as many steps to go as the episode is long) is a fresh reset: step 0
    first = pool.states[pool.steps_to_go == pool.lengths.max()][:1]
    env.set_state(torch.arange(1), first, keep_episode_counter=True)
    assert int(env.episode_length_buf[0]) == 0
    # and the last state of each episode (one step to go) was taken at step length - 1
    last = pool.states[pool.steps_to_go == 1][:4]
    env.set_state(torch.arange(len(last)), last, keep_episode_counter=True)
    steps = sorted(env.episode_length_buf[: len(last)].tolist())
    assert steps == sorted((pool.lengths - 1).tolist())[: len(last)]


def test_starts_come_from_the_band_and_the_frontier_moves_back_only_on_success():
    pool = toy_pool()
    cur = ReverseCurriculum(pool, share=1.0, seed=0, num_envs=8, start=10, band=40, advance=10,
                            advance_at=0.6, min_episodes=16)
    env = RecordingEnv(8)
    for _ in range(10):
        finish(cur, env, range(8), False)
    starts = torch.cat([s for _, s in env.set_calls]).flatten()
    assert starts.min() >= 1 and starts.max() <= 10  # only from the last 10 steps of the expert's episodes
    assert cur.frontier == 10  # failures never move it

    finish(cur, env, range(8), True)
    assert cur.frontier == 10  # 8 successes and 8 failures among the last 16 band episodes: 0.5 < 0.6
    finish(cur, env, range(8), True)
    assert cur.frontier == 20
    finish(cur, env, range(8), True)
    assert cur.frontier == 20  # judged again only after min_episodes new band episodes
    for _ in range(5):
        finish(cur, env, range(8), True)
    assert cur.frontier == 50
    env.set_calls.clear()
    finish(cur, env, range(8), True)
    starts = torch.cat([s for _, s in env.set_calls]).flatten()
    assert starts.min() > 10 and starts.max() <= 50  # the band: the last 40 steps before the frontier


def test_fresh_share_grows_with_the_frontier_and_reaching_the_end_samples_everything():
    pool = toy_pool()
    cur = ReverseCurriculum(pool, share=0.5, seed=0, num_envs=64, start=10, band=40, advance=45,
                            advance_at=0.5, min_episodes=8)
    assert abs(cur.expert_share() - (1 - 0.5 * 10 / 80)) < 1e-9  # median expert episode: 80 steps
    env = RecordingEnv(64)
    while cur.frontier < cur.longest:
        finish(cur, env, range(64), True)
    assert cur.expert_share() == 0.5
    env.set_calls.clear()
    fresh = 0
    for _ in range(20):
        finish(cur, env, range(64), True)
        fresh += int((cur.started_from < 0).sum())
    starts = torch.cat([s for _, s in env.set_calls]).flatten()
    assert starts.min() <= 5 and starts.max() >= 90  # the whole pool, not just a band
    assert 0.4 < fresh / (20 * 64) < 0.6
    assert cur.stats()["fresh_success_rate"] == 1.0  # fresh episodes are booked apart


def test_uniform_mode_keeps_a_fixed_share_over_the_whole_pool():
    cur = ReverseCurriculum(toy_pool(), share=0.5, seed=0, num_envs=64, adaptive=False)
    env = RecordingEnv(64)
    for _ in range(20):
        finish(cur, env, range(64), True)
    assert cur.frontier == cur.longest == 100 and cur.expert_share() == 0.5
    starts = torch.cat([s for _, s in env.set_calls]).flatten()
    assert starts.min() <= 3 and starts.max() >= 97


def test_state_dict_round_trip_continues_identically():
    pool = toy_pool()
    a = ReverseCurriculum(pool, share=0.8, seed=1, num_envs=8, min_episodes=8)
    env_a = RecordingEnv(8)
    for k in range(6):
        finish(a, env_a, range(8), k % 2 == 0)
    b = ReverseCurriculum(pool, share=0.8, seed=99, num_envs=8, min_episodes=8)
    b.load_state_dict(a.state_dict())
    env_b = RecordingEnv(8)
    env_a.set_calls.clear()
    for _ in range(6):
        finish(a, env_a, range(8), True)
        finish(b, env_b, range(8), True)
    assert json.dumps(a.stats()) == json.dumps(b.stats()) and a.frontier == b.frontier  # nan-safe
    assert all(torch.equal(x[1], y[1]) and torch.equal(x[0], y[0]) for x, y in zip(env_a.set_calls, env_b.set_calls))


def test_expert_starts_get_a_time_budget_from_their_steps_to_go():
    cur = ReverseCurriculum(toy_pool(), share=1.0, seed=0, num_envs=8, start=30, budget_factor=2.0, budget_extra=20)
    env = RecordingEnv(8)
    finish(cur, env, range(8), False)
    ids, states = env.set_calls[-1]
    to_go = states.flatten().long()
    # the step counter moves forward so that the episode times out after 2 * steps to go + 20 steps
    assert torch.equal(env.episode_length_buf[ids], 300 - (2 * to_go + 20))
