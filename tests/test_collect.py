"""Retry-until-success collection into zarr: schema, filters, attempts, crash safety, determinism."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from collect.collector import FilterConfig, classify
from datasets.store import SCHEMA_VERSION, EpisodeStore
from tests.conftest import ROOT

BASE = ["stage=collect", "teacher=scripted", "logger.mode=disabled", "collect.num_envs=8"]


def run_collect(run_dir, *extra, wait=True):
    cmd = [sys.executable, str(ROOT / "pipeline.py"), *BASE, f"run_dir={run_dir}", *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def all_arrays(path):
    store = EpisodeStore.open(path)
    return {name: store.array(f"data/{name}")[:] for name in store.data_names()} | \
        {f"meta/{k}": v for k, v in store.episode_meta().items()} | {"ends": store.episode_ends}


@pytest.fixture(scope="module")
def lift_store(tmp_path_factory):
    run = tmp_path_factory.mktemp("collect") / "run"
    r = run_collect(run, "collect.num_episodes=16")
    assert r.returncode == 0, r.stderr
    return run / "dataset.zarr"


def test_schema_provenance_and_every_kept_episode_succeeds(lift_store):
    store = EpisodeStore.open(lift_store)
    attrs = store.attrs
    for key in ("schema_version", "env", "env_cfg", "obs_spec", "teacher", "teacher_sha256", "code_version",
                "seed", "created_at"):
        assert key in attrs, key
    assert attrs["env"] == "Lift-v1" and attrs["schema_version"] == SCHEMA_VERSION
    assert store.num_episodes == 16
    names = store.data_names()
    for term in attrs["obs_spec"]["policy"]:
        assert f"obs/policy/{term[0]}_{term[1]}" in names
    success = store.array("data/success")[:]
    ends = store.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    for s, e in zip(starts, ends):
        assert success[e - 1] and not success[s:e - 1].any()  # success exactly at the end
        attempt = store.array("data/attempt")[s:e]
        assert attempt[0] == 0 and np.all(np.diff(attempt) >= 0)
    assert store.array("data/sim_state").shape == (store.num_steps, store.array("data/sim_state").shape[1])


def test_attempts_match_injected_drops_in_a_scripted_case(tmp_path):
    # light, grippy cubes: the only way to lose a grasp is a forced drop, so attempts - 1 == drops
    r = run_collect(tmp_path / "run", "collect.num_episodes=12", "collect.perturbations.drop_rate=0.08",
                    "collect.perturbations.push_rate=0.0", "collect.perturbations.noise_rate=0.0",
                    "env.cube.mass=[0.05,0.08]", "env.cube.friction=[1.2,1.5]", "collect.max_attempts=20")
    assert r.returncode == 0, r.stderr
    meta = EpisodeStore.open(tmp_path / "run" / "dataset.zarr").episode_meta()
    assert meta["drops"].sum() >= 4
    assert np.array_equal(meta["n_attempts"] - 1, meta["drops"])


def test_each_filter_rule_fires_on_a_constructed_case():
    cfg = FilterConfig(max_attempts=3)
    ok = dict(success=True, lost=False, unstable=False, touched=True, attempts=1)
    assert classify(**ok, cfg=cfg) is None
    assert classify(**{**ok, "unstable": True}, cfg=cfg) == "sim_unstable"
    assert classify(**{**ok, "success": False, "lost": True}, cfg=cfg) == "object_lost"
    assert classify(**{**ok, "attempts": 4}, cfg=cfg) == "too_many_attempts"
    assert classify(**{**ok, "success": False, "touched": False}, cfg=cfg) == "no_contact"
    assert classify(**{**ok, "success": False}, cfg=cfg) == "never_succeeded"


def test_retry_mix_quota_and_rejections_are_recorded(tmp_path):
    r = run_collect(tmp_path / "run", "collect.num_episodes=8", "collect.retry_share_target=0.5",
                    "collect.perturbations.drop_rate=0.05")
    assert r.returncode == 0, r.stderr
    store = EpisodeStore.open(tmp_path / "run" / "dataset.zarr")
    attempts = store.episode_meta()["n_attempts"]
    assert (attempts > 1).sum() == 4 and (attempts == 1).sum() == 4
    rejected = store.rejected()
    quota = store.attrs["reject_reasons"].index("mix_quota")
    assert (rejected["reason"] == quota).sum() >= 1
    assert len(rejected["seed"]) == len(rejected["round"]) == len(rejected["reason"])


def test_same_seed_gives_byte_identical_arrays(lift_store, tmp_path):
    r = run_collect(tmp_path / "again", "collect.num_episodes=16")
    assert r.returncode == 0, r.stderr
    a, b = all_arrays(lift_store), all_arrays(tmp_path / "again" / "dataset.zarr")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_sigkill_mid_write_then_resume_loses_nothing_and_duplicates_nothing(lift_store, tmp_path):
    run = tmp_path / "killed"
    proc = run_collect(run, "collect.num_episodes=16", "collect.flush_every=2", wait=False)
    path = run / "dataset.zarr"
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            if EpisodeStore.open(path).num_episodes >= 5:
                break
        except Exception:
            continue
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = EpisodeStore.open(path).num_episodes
    assert 5 <= killed_at < 16
    r = run_collect(run, "collect.num_episodes=16", "collect.flush_every=2")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    a, b = all_arrays(lift_store), all_arrays(path)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_resume_with_another_env_config_is_refused(lift_store, tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(lift_store, run / "dataset.zarr")
    r = run_collect(run, "collect.num_episodes=20", "env.cube.mass=[0.1,0.2]")
    assert r.returncode == 2 and "another env config" in r.stderr
    assert EpisodeStore.open(run / "dataset.zarr").num_episodes == 16  # untouched


def test_inspect_json_matches_the_store(lift_store):
    r = subprocess.run([sys.executable, "-m", "datasets.inspect", str(lift_store), "--json", "--episodes"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    store = EpisodeStore.open(lift_store)
    meta = store.episode_meta()
    assert info["episodes"] == store.num_episodes and info["steps"] == store.num_steps
    assert info["with_retry_share"] == pytest.approx((meta["n_attempts"] > 1).mean())
    assert sum(info["attempts_histogram"].values()) == store.num_episodes
    assert info["schema_version"] == SCHEMA_VERSION and info["env"] == "Lift-v1"
    assert sum(info["rejected"].values()) == len(store.rejected()["reason"])
    actions = store.array("data/action")[:]
    assert info["actions"]["outside_bounds_share"] == pytest.approx(float((np.abs(actions) > 1).mean()))
    assert [e["length"] for e in info["episode_table"]] == meta["length"].tolist()


def test_missing_or_corrupt_store_is_a_clear_error(tmp_path):
    for path in (tmp_path / "nope.zarr", tmp_path / "junk.zarr"):
        if path.name == "junk.zarr":
            path.mkdir()
            (path / "zarr.json").write_text("{not json")
        r = subprocess.run([sys.executable, "-m", "datasets.inspect", str(path)], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 2
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:")


def test_verify_replays_a_fresh_dataset_exactly_and_catches_tampering(lift_store, tmp_path):
    import shutil

    from datasets.replay import verify

    assert verify(EpisodeStore.open(lift_store), episodes=[0, 1])["max_drift"] == 0.0
    tampered = tmp_path / "tampered.zarr"
    shutil.copytree(lift_store, tampered)
    store = EpisodeStore.open(tampered, mode="a")
    actions = store.array("data/action")
    actions[3] = actions[3] + 0.5  # a corrupted action in episode 0
    report = verify(EpisodeStore.open(tampered), episodes=[0])
    assert not report["passed"] and report["max_drift"] > 1e-4


def test_inspect_plots_and_video(lift_store, tmp_path):
    r = subprocess.run([sys.executable, "-m", "datasets.inspect", str(lift_store), "--plots", str(tmp_path / "p"),
                        "--video", "1", "--out", str(tmp_path / "ep1.gif"), "--json"], cwd=ROOT, capture_output=True,
                       text=True)
    if r.returncode == 2 and "rendering is unavailable" in r.stderr:
        pytest.skip("no GL backend on this machine")
    assert r.returncode == 0, r.stderr
    for name in ("episodes.png", "actions.png", "trajectories.png"):
        assert (tmp_path / "p" / name).stat().st_size > 5_000
    info = json.loads(r.stdout)
    length = int(EpisodeStore.open(lift_store).episode_meta()["length"][1])
    assert info["video"]["frames"] == length and (tmp_path / "ep1.gif").stat().st_size > 10_000


def test_other_schema_version_and_teacher_for_another_env_are_refused(lift_store, tmp_path):
    import shutil

    import zarr

    old = tmp_path / "old.zarr"
    shutil.copytree(lift_store, old)
    zarr.open_group(str(old), mode="r+").attrs["schema_version"] = 99
    r = subprocess.run([sys.executable, "-m", "datasets.inspect", str(old)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "schema version 99" in r.stderr

    run = tmp_path / "run"
    made = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "stage=teacher", "teacher=scripted", "env=stack",
                           "teacher.eval_episodes=2", "env.num_envs=2", "logger.mode=disabled", f"run_dir={run}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    r = run_collect(run, "collect.num_episodes=2", "env=lift")
    assert r.returncode == 2 and "made for Stack-v1" in r.stderr
    assert not (run / "dataset.zarr").exists()  # nothing written


def test_two_workers_merge_into_the_single_worker_store(lift_store, tmp_path):
    r = run_collect(tmp_path / "par", "collect.num_episodes=16", "collect.workers=2")
    assert r.returncode == 0, r.stderr
    merged = tmp_path / "par" / "dataset.zarr"
    assert not (tmp_path / "par" / "dataset.zarr.shards").exists()  # shards removed after the merge
    a, b = all_arrays(lift_store), all_arrays(merged)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    ra, rb = EpisodeStore.open(lift_store).rejected(), EpisodeStore.open(merged).rejected()
    for k in ra:
        assert np.array_equal(ra[k], rb[k]), k


def test_a_torn_journal_record_is_dropped_and_the_complete_ones_are_folded_in(tmp_path):
    layout = {"action": ((2,), "float32"), "attempt": ((), "int16")}
    store = EpisodeStore.create(tmp_path / "s.zarr", {"env": "toy"}, layout, {"seed": "uint64"}, flush_every=100)
    episodes = [{"action": np.full((3 + i, 2), i, np.float32), "attempt": np.arange(3 + i, dtype=np.int16)}
                for i in range(3)]
    for i, ep in enumerate(episodes):
        store.append_episode(ep, {"seed": i})
    store.append_rejected({"reason": "object_lost", "seed": 9, "round": 0, "slot": 3, "length": 4, "n_attempts": 1})
    (journal,) = (tmp_path / "s.zarr" / "journal").glob("*.jnl")
    blob = journal.read_bytes()
    journal.write_bytes(blob[: len(blob) - 5])  # a kill in the middle of writing the rejection
    reopened = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    assert reopened.committed_episodes == 3 and reopened.committed_rejected == 0
    for i, ep in enumerate(episodes):
        assert np.array_equal(reopened.episode(i)["action"], ep["action"])
    assert list(reopened.episode_meta()["seed"]) == [0, 1, 2]
    assert not list((tmp_path / "s.zarr" / "journal").glob("*.jnl"))  # folded, then removed


def test_a_commit_torn_between_its_new_shape_and_its_values_is_repaired(tmp_path):
    """zarr's append writes the new shape before the new values: a kill in between leaves
    episode_ends longer, its tail reading 0. Repair must keep the committed episodes, and the
    journal, still on disk, brings back the ones whose commit was torn."""
    layout = {"action": ((2,), "float32"), "attempt": ((), "int16")}
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path, {"env": "toy"}, layout, {"seed": "uint64"}, flush_every=100)
    episodes = [{"action": np.full((3 + i, 2), i, np.float32), "attempt": np.arange(3 + i, dtype=np.int16)}
                for i in range(4)]
    for i, ep in enumerate(episodes[:2]):
        store.append_episode(ep, {"seed": i})
    store.flush()  # two committed
    for i, ep in enumerate(episodes[2:], start=2):
        store.append_episode(ep, {"seed": i})  # two journaled, not folded
    journal = sorted((path / "journal").glob("*.jnl"))
    assert journal
    # the torn fold: data and meta appended, the commit's shape grown, its values not yet written
    for name, arr in store._arrays("data"):
        arr.append(np.concatenate([ep[name] for ep in episodes[2:]]))
    seeds = dict(store._arrays("meta/episode"))["seed"]
    seeds.append(np.array([2, 3], np.uint64))
    ends = store._ends()
    ends.resize((4,))
    assert list(ends[:]) == [3, 7, 0, 0]

    reopened = EpisodeStore.open(path, mode="a")
    assert reopened.committed_episodes == 4  # two repaired, two replayed from the journal
    for i, ep in enumerate(episodes):
        assert np.array_equal(reopened.episode(i)["action"], ep["action"])
    assert list(reopened.episode_meta()["seed"]) == [0, 1, 2, 3]


def test_journal_arrays_are_the_bytes_np_save_writes():
    """The journal's lean .npy encoder must stay readable by np.load: same bytes as np.save for C-order
    arrays (the record types the store writes), the same values for the rest."""
    import io

    from datasets.journal import npy_bytes

    record = np.zeros((), dtype=[("seed", "<u8"), ("changed", "?"), ("yaw", "<f4")])
    record["seed"] = 2**63 + 5
    cases = [np.arange(12, dtype=np.float32).reshape(3, 4), record, np.array([True, False]),
             np.zeros((0, 5)), np.array(7, np.int16), np.arange(6.0).reshape(2, 3)]
    for array in cases:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        assert npy_bytes(array) == buf.getvalue(), array.dtype
    for array in (np.arange(12.0).reshape(3, 4).T, np.arange(10, dtype=np.int16)[::3]):
        loaded = np.load(io.BytesIO(npy_bytes(array)), allow_pickle=False)
        assert loaded.dtype == array.dtype and np.array_equal(loaded, array)
