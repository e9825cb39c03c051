"""What the store keeps (raw actions, perturbation flags) and its rejection commit, on small in-process runs."""

import numpy as np
import pytest
import yaml
import zarr

from collect.collector import EPISODE_LAYOUT, FilterConfig, collect, data_layout
from datasets.store import EpisodeStore
from envs import make_env
from envs.scripted import ScriptedExpert
from tests.conftest import ROOT

NOISE_STEPS, DROP_STEPS = 5, 6


def lift_env(num_envs=4, **perturbations):
    cfg = yaml.safe_load((ROOT / "configs" / "env" / "lift.yaml").read_text())
    cfg.update(seed=0, num_envs=num_envs)
    cfg["perturbations"] = {**cfg["perturbations"], "noise_steps": NOISE_STEPS, "drop_steps": DROP_STEPS,
                            **perturbations}
    return make_env(cfg)


def collect_into(path, env, teacher, episodes):
    store = EpisodeStore.create(path, {"env": env.cfg.name}, data_layout(env), EPISODE_LAYOUT, flush_every=4)
    collect(env, teacher, store, episodes, seed=0, filters=FilterConfig(max_attempts=20))
    env.close()
    return EpisodeStore.open(path)


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return [(int(s), int(e - s)) for s, e in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0], strict=True)]


def test_perturbation_flags_cover_every_step_a_drop_or_burst_acted(tmp_path):
    """A burst started at step s noises steps s..s+noise_steps-1 (a drop: drop_steps); bursts can follow
    back to back, so a run of flags is a whole number of bursts unless the episode ends inside it."""
    env = lift_env(noise_rate=0.04, drop_rate=0.03, push_rate=0.02)
    store = collect_into(tmp_path / "s.zarr", env, ScriptedExpert.for_env(env), episodes=8)
    meta = store.episode_meta()
    seen = {"noise": 0, "drop": 0}
    for i in range(store.num_episodes):
        ep = store.episode(i)
        T = len(ep["action"])
        for kind, steps, count in (("noise", NOISE_STEPS, "noise_bursts"), ("drop", DROP_STEPS, "drops")):
            flags = ep[f"perturbation/{kind}"]
            assert flags.dtype == bool and flags.shape == (T,)
            bursts = 0
            for start, length in runs(flags):
                if start + length < T:
                    assert length % steps == 0, (kind, i, start, length)
                bursts += -(-length // steps)
            assert bursts == meta[count][i], (kind, i)
            seen[kind] += int(flags.sum())
        assert ep["perturbation/push"].sum() == meta["pushes"][i]  # a push acts in its start step only
    assert seen["noise"] >= NOISE_STEPS * 2 and seen["drop"] >= DROP_STEPS  # the case really happened


class LoudGripper:
    """The scripted expert with its gripper command tripled (the env clips it back to +-1; only its sign
    matters there), recording every action it emits."""

    def __init__(self, env):
        self.inner, self.emitted = ScriptedExpert.for_env(env), []

    def reset(self, done):
        self.inner.reset(done)

    def act(self, obs):
        action = self.inner.act(obs).clone()
        action[:, 4] *= 3.0
        self.emitted.append(action.numpy().copy())
        return action


def test_stored_actions_are_the_raw_teacher_actions_beyond_the_bounds(tmp_path):
    env = lift_env()
    teacher = LoudGripper(env)
    store = collect_into(tmp_path / "s.zarr", env, teacher, episodes=4)
    stored = store.read("data/action")
    assert np.abs(stored[:, 4]).min() == 3.0 and stored.max() > 1.0  # not clipped to [-1, 1]
    emitted = {row.tobytes() for step in teacher.emitted for row in step}
    assert all(row.tobytes() in emitted for row in stored)  # exactly what the teacher emitted


def toy_store(path):
    layout = {"action": ((2,), "float32"), "attempt": ((), "int16")}
    return EpisodeStore.create(path, {"env": "toy"}, layout, {"seed": "uint64"}, flush_every=100)


def rejection(i):
    return {"reason": "object_lost", "seed": 100 + i, "round": i, "slot": 3, "length": 4 + i, "n_attempts": 1}


def test_rejections_torn_before_their_commit_are_replayed_not_zero_filled(tmp_path):
    """A kill after the rejected arrays grew (shape written, some values not) and before the rejection
    commit: a reader sees the committed rejections only, and a resume replays the rest from the journal."""
    path = tmp_path / "s.zarr"
    store = toy_store(path)
    store.append_episode({"action": np.ones((3, 2), np.float32), "attempt": np.zeros(3, np.int16)}, {"seed": 7})
    for i in range(2):
        store.append_rejected(rejection(i))
    store.flush()  # one episode, two rejections committed
    for i in range(2, 4):
        store.append_rejected(rejection(i))  # journaled
    assert list((path / "journal").glob("*.jnl"))
    for k, (name, arr) in enumerate(store._arrays("meta/rejected")):  # the torn fold, no commit
        if k % 2:
            arr.append(np.array([rejection(i)[name] if name != "reason" else 1 for i in (2, 3)], arr.dtype))
        else:
            arr.resize((4,))  # the new shape is on disk, the values are not: they read as the fill value 0

    reader = EpisodeStore.open(path)
    assert reader.committed_rejected == 2 and list(reader.rejected()["seed"]) == [100, 101]
    resumed = EpisodeStore.open(path, mode="a")
    rejected = resumed.rejected()
    assert resumed.committed_rejected == 4 and resumed.committed_episodes == 1
    assert list(rejected["seed"]) == [100, 101, 102, 103] and list(rejected["length"]) == [4, 5, 6, 7]
    assert (rejected["reason"] == 1).all()  # object_lost, no zero-filled record
    assert np.array_equal(resumed.episode(0)["action"], np.ones((3, 2), np.float32))


def test_episode_slice_comes_from_the_index_read_once(tmp_path):
    store = toy_store(tmp_path / "s.zarr")
    for i in range(3):
        store.append_episode({"action": np.full((2 + i, 2), i, np.float32), "attempt": np.zeros(2 + i, np.int16)},
                             {"seed": i})
    store.flush()
    reader = EpisodeStore.open(tmp_path / "s.zarr")
    zarr.open_array(str(tmp_path / "s.zarr" / "meta" / "episode_ends"), mode="r+").resize((0,))
    # were the ends read again per call, the reader would now see no episode
    assert [reader.episode_slice(i) for i in range(3)] == [slice(0, 2), slice(2, 5), slice(5, 9)]
    assert np.array_equal(reader.episode(2)["action"], np.full((4, 2), 2, np.float32))
    with pytest.raises(IndexError, match="episode 3 does not exist; the store has 3"):
        reader.episode_slice(3)



def test_a_resume_removes_the_partial_files_a_killed_zarr_write_leaves_and_a_reader_does_not(tmp_path):
    """A regression guard for the targeted search (the node dirs and the chunk rows a fold writes)."""
    path = tmp_path / "s.zarr"
    store = toy_store(path)
    store.append_episode({"action": np.ones((3, 2), np.float32), "attempt": np.zeros(3, np.int16)}, {"seed": 7})
    store.flush()
    left = [path / "data" / "action" / "c" / "0" / "0.1a2b.partial",
            path / "meta" / "rejected" / "zarr.json.3c.partial",
            path / "meta" / "episode_ends" / "c" / "0.4d.partial"]
    for p in left:
        p.write_bytes(b"torn")
    EpisodeStore.open(path)
    assert all(p.exists() for p in left)
    EpisodeStore.open(path, mode="a")
    assert not any(p.exists() for p in left)
