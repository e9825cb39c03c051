"""Resets to demonstration states (finetune/demo_reset.py) on a small scripted Lift dataset."""

import io

import numpy as np
import pytest
import torch

from collect.collector import EPISODE_LAYOUT, FilterConfig, collect, data_layout
from datasets.store import EpisodeStore
from envs import make_env
from envs.base import ConfigError
from envs.scripted import ScriptedExpert
from finetune.demo_reset import DemoStateResets, DemoStates, load_demo_states
from tests.conftest import env_config

N = 4


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """Four successful scripted Lift episodes, with drops so that some states lie after a failed attempt."""
    path = tmp_path_factory.mktemp("demo") / "lift.zarr"
    env = make_env(env_config("lift", num_envs=N, num_threads=1, perturbations={"drop_rate": 0.05}))
    store = EpisodeStore.create(path, {"env": env.cfg.name}, data_layout(env), EPISODE_LAYOUT, flush_every=4)
    collect(env, ScriptedExpert.for_env(env), store, N, seed=0, filters=FilterConfig(max_attempts=20))
    store.flush()
    env.close()
    return path


@pytest.fixture
def env(make):
    return make("lift", num_envs=N, num_threads=1, perturbations={"drop_rate": 0.05})


def stored_obs(store: EpisodeStore, env, group: str, t: int) -> np.ndarray:
    """Row t of the observation group as the env lays it out, from the store's per-term arrays."""
    return np.concatenate([store.array(f"data/obs/{group}/{term.entity}_{term.name}")[t]
                           for term in env.obs_spec.groups[group]])


def test_loaded_states_are_every_step_but_the_last_with_the_states_own_attempt(store_path, env):
    demos = load_demo_states(store_path, env)
    store = EpisodeStore.open(store_path)
    ends = store.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    assert len(demos) == int(ends[-1]) - len(ends)
    assert demos.counts.tolist() == (ends - starts - 1).tolist()
    for e, (s, end) in enumerate(zip(starts, ends)):
        rows = demos.offsets[e] + torch.arange(int(demos.counts[e]))
        assert torch.equal(demos.states[rows], torch.from_numpy(store.array("data/sim_state")[s:end - 1]))
        assert demos.step[rows].tolist() == list(range(end - s - 1)) and (demos.episode[rows] == e).all()
    # the attempt booked per state is the counter inside the state (data/attempt is the one after the step)
    assert demos.attempt.max() > 0, "the fixture should contain retries"
    for row in torch.nonzero(demos.attempt > 0).flatten()[:3].tolist() + [0, len(demos) - 1]:
        env.set_state([0], demos.states[row:row + 1])
        assert env.st["attempt"][0] == demos.attempt[row]


def test_a_demo_reset_puts_the_env_exactly_in_the_stored_state(store_path, env):
    demos = load_demo_states(store_path, env)
    hook = DemoStateResets(demos, prob=1.0, seed=3, num_envs=N)
    before = env.get_state()
    ids = torch.tensor([1, 3])
    assert hook(env, ids, torch.tensor([True, False]))
    rows = hook.started_from[ids]
    assert (rows >= 0).all() and (hook.started_from[[0, 2]] == -1).all()
    got = env.get_state(ids)
    # everything but the env's own episode count and base seed is the stored state, bit for bit
    own = [env.mj_state_size + 4 + env._SCALARS.index(k) for k in ("episode_index", "base_seed_lo", "base_seed_hi")]
    rest = [c for c in range(env.state_size) if c not in own]
    assert torch.equal(got[:, rest], demos.states[rows][:, rest])
    assert torch.equal(got[:, own], before[ids][:, own])
    assert torch.equal(env.get_state([0, 2]), before[[0, 2]])  # the others untouched
    # the observations are those the demonstration acted on at that step
    store = EpisodeStore.open(store_path)
    obs = env.get_observations()
    for r, i in zip(rows.tolist(), ids.tolist()):
        t = int(store.episode_slice(int(demos.episode[r])).start + demos.step[r])
        for group in ("policy", "privileged"):
            np.testing.assert_array_equal(obs[group][i].numpy(), stored_obs(store, env, group, t))
    # the step counter travels with the state: the demo's time left, then a time-out
    assert env.episode_length_buf[ids].tolist() == demos.step[rows].tolist()


def test_a_late_demo_start_times_out_when_the_demo_time_is_up(store_path, env):
    demos = load_demo_states(store_path, env)
    row = int(torch.argmax(demos.step))
    env.set_state([0], demos.states[row:row + 1], keep_episode_counter=True)
    left = env.max_episode_length - int(demos.step[row])
    for k in range(left):
        _, _, done, extras = env.step(torch.zeros(N, env.num_actions))  # open gripper: no success, no loss
        assert bool(done[0]) == (k == left - 1)
    assert extras["time_outs"][0]


def test_prob_zero_never_sets_and_prob_one_always_does(store_path, env):
    demos = load_demo_states(store_path, env)
    off = DemoStateResets(demos, prob=0.0, seed=0, num_envs=N)
    before = env.get_state()
    for _ in range(20):
        assert off(env, torch.arange(N), torch.zeros(N, dtype=torch.bool)) is False
    assert torch.equal(env.get_state(), before) and (off.started_from == -1).all()
    assert off.stats()["demo_start_share"] == 0.0
    on = DemoStateResets(demos, prob=1.0, seed=0, num_envs=N)
    for _ in range(5):
        assert on(env, torch.arange(N), torch.zeros(N, dtype=torch.bool)) is True
        assert (on.started_from >= 0).all()
        assert torch.equal(env.get_state()[:, :env.mj_state_size], demos.states[on.started_from][:, :env.mj_state_size])
    assert on.stats()["demo_start_share"] == 1.0


class RecordingEnv:
    """Stands in for an env: records which states were set where."""

    def __init__(self):
        self.calls = []

    def set_state(self, ids, states, keep_episode_counter=False):
        assert keep_episode_counter
        self.calls.append((ids.clone(), states.clone()))


def toy_demos(lengths=(3, 6, 2), attempts_from=4) -> DemoStates:
    """Episodes of the given lengths; state value = its row; rows from ``attempts_from`` on are retries."""
    counts = torch.tensor(lengths) - 1
    P = int(counts.sum())
    offsets = torch.cumsum(counts, 0) - counts
    return DemoStates(states=torch.arange(P, dtype=torch.float64)[:, None].repeat(1, 3),
                      episode=torch.repeat_interleave(torch.arange(len(counts)), counts),
                      step=torch.cat([torch.arange(int(c)) for c in counts]),
                      attempt=(torch.arange(P) >= attempts_from).long(), offsets=offsets, counts=counts)


def choices(hook, calls: int, n: int = 8, env=None) -> list:
    env = env or RecordingEnv()
    out = []
    for _ in range(calls):
        hook(env, torch.arange(n), torch.zeros(n, dtype=torch.bool))
        out.append(hook.started_from.clone())
    return out


def test_same_seed_same_choices_and_a_state_dict_round_trip_continues_them():
    a, b = (DemoStateResets(toy_demos(), prob=0.5, seed=7, num_envs=8) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(choices(a, 6), choices(b, 6)))
    other = DemoStateResets(toy_demos(), prob=0.5, seed=8, num_envs=8)
    assert not all(torch.equal(x, y) for x, y in zip(choices(a, 6), choices(other, 6)))

    ref = DemoStateResets(toy_demos(), prob=0.5, seed=1, num_envs=8)
    choices(ref, 3)
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)  # through a checkpoint, as the runner saves it
    resumed = DemoStateResets(toy_demos(), prob=0.5, seed=999, num_envs=8)
    choices(resumed, 2)  # a used hook: loading must replace its windows, not add to them
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert resumed.stats() == ref.stats()
    assert all(torch.equal(x, y) for x, y in zip(choices(ref, 4), choices(resumed, 4)))
    assert resumed.stats() == ref.stats()


def test_choice_is_episode_then_step_and_never_an_episodes_last_step():
    demos = toy_demos(lengths=(2, 11))  # episode 0 has one startable state, episode 1 has ten
    hook = DemoStateResets(demos, prob=1.0, seed=0, num_envs=4000)
    rows = hook.start(RecordingEnv(), torch.arange(4000))
    assert rows.min() >= 0 and rows.max() < len(demos)  # the stored rows hold no episode's last step
    share_first = (demos.episode[rows] == 0).float().mean()
    assert abs(share_first - 0.5) < 0.04  # uniform over episodes, not over states (that would be 1/11)
    steps = torch.bincount(demos.step[rows[demos.episode[rows] == 1]], minlength=10).float()
    assert steps.min() > 0.6 * steps.mean()  # every step of episode 1 drawn, about evenly


def test_stats_on_a_scripted_sequence():
    demos = toy_demos()  # rows 4.. (episode 1 from step 2, episode 2) lie after a failed attempt
    hook = DemoStateResets(demos, prob=0.5, seed=0, num_envs=4)
    env = RecordingEnv()
    nan = hook.stats()
    assert all(np.isnan(v) for v in nan.values())
    # start() puts envs 0 and 1 in demo states; it does not count as an on_reset decision
    rows01 = hook.start(env, torch.tensor([0, 1]))
    stats = hook.stats()
    assert np.isnan(stats["demo_start_share"])
    assert stats["demo_start_after_failure_share"] == (rows01 >= 4).float().mean().item()
    # envs 0 (demo start) and 2 (fresh) end: 0 succeeded, 2 failed; booked where each started
    hook.prob = 0.0  # scripted: these resets start fresh
    assert hook(env, torch.tensor([0, 2]), torch.tensor([True, False])) is False
    stats = hook.stats()
    assert stats["demo_start_success_rate"] == 1.0 and stats["fresh_success_rate"] == 0.0
    assert stats["demo_start_share"] == 0.0
    # env 1 (still from its demo start) fails, env 0 (now fresh) succeeds; all resets now from demos
    hook.prob = 1.0
    assert hook(env, torch.tensor([1, 0]), torch.tensor([False, True])) is True
    stats = hook.stats()
    assert stats["demo_start_success_rate"] == 0.5 and stats["fresh_success_rate"] == 0.5
    assert stats["demo_start_share"] == 0.5  # 2 of the 4 on_reset decisions
    ids, states = env.calls[-1]
    assert ids.tolist() == [1, 0] and torch.equal(states[:, 0].long(), hook.started_from[ids])
    all_rows = torch.cat([rows01, hook.started_from[ids]])
    assert hook.stats()["demo_start_after_failure_share"] == (all_rows >= 4).float().mean().item()


def test_bad_prob_and_a_store_of_another_env_are_refused(store_path, env, make, tmp_path):
    demos = load_demo_states(store_path, env)
    for prob in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="demo_reset_prob"):
            DemoStateResets(demos, prob=prob, seed=0, num_envs=N)
    stack = make("stack", num_envs=2, num_threads=1)  # two objects: a wider state
    with pytest.raises(ConfigError, match="Lift-v1"):
        load_demo_states(store_path, stack)
    # same task name, another state size (e.g. an older env version): refused by the size check
    wrong = EpisodeStore.create(tmp_path / "w.zarr", {"env": "Lift-v1"},
                                {"action": ((5,), "float32"), "attempt": ((), "int16"),
                                 "sim_state": ((env.state_size - 1,), "float64")}, {"seed": "uint64"})
    wrong.append_episode({"action": np.zeros((3, 5)), "attempt": np.zeros(3),
                          "sim_state": np.zeros((3, env.state_size - 1))}, {"seed": 0})
    wrong.flush()
    with pytest.raises(ConfigError, match=f"{env.state_size - 1} values.*{env.state_size}.*re-collect"):
        load_demo_states(tmp_path / "w.zarr", env)


def test_an_empty_store_loads_but_cannot_serve_demo_starts(env, tmp_path):
    empty = EpisodeStore.create(tmp_path / "e.zarr", {"env": "Lift-v1"},
                                {"action": ((5,), "float32"), "attempt": ((), "int16"),
                                 "sim_state": ((env.state_size,), "float64")}, {"seed": "uint64"})
    empty.flush()
    demos = load_demo_states(tmp_path / "e.zarr", env)
    assert len(demos) == 0
    DemoStateResets(demos, prob=0.0, seed=0, num_envs=N)  # off: fine
    with pytest.raises(ConfigError, match="no episode longer than one step"):
        DemoStateResets(demos, prob=0.5, seed=0, num_envs=N)
