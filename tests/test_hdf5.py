"""HDF5 export/import: an exact round trip of the store, and robomimic 0.3.0's own readers on the file."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from datasets import hdf5
from datasets.hdf5 import export, import_
from datasets.store import EpisodeStore
from tests.conftest import ROOT


def collect(run_dir, *extra):
    cmd = [sys.executable, str(ROOT / "pipeline.py"), "stage=collect", "teacher=scripted", "logger.mode=disabled",
           "collect.num_envs=8", f"run_dir={run_dir}", *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return run_dir / "dataset.zarr"


@pytest.fixture(scope="module")
def store_with_rejections(tmp_path_factory):
    """12 kept episodes with retries and drops, and rejections (the retry quota turns some away)."""
    path = collect(tmp_path_factory.mktemp("hdf5") / "run", "collect.num_episodes=12",
                   "collect.retry_share_target=0.5", "collect.perturbations.drop_rate=0.05")
    assert len(EpisodeStore.open(path).rejected()["reason"]) > 0
    return path


def everything(path) -> dict:
    """Every array and attr of a store, read through its public reader methods only."""
    store = EpisodeStore.open(path)
    out = {f"data/{name}": store.array(f"data/{name}")[:] for name in store.data_names()}
    out |= {f"meta/episode/{k}": v for k, v in store.episode_meta().items()}
    out |= {f"meta/rejected/{k}": v for k, v in store.rejected().items()}
    out["meta/episode_ends"] = store.episode_ends
    return out, store.attrs


def test_export_then_import_restores_every_array_rejection_and_attr(store_with_rejections, tmp_path):
    h5, back = tmp_path / "demos.hdf5", tmp_path / "back.zarr"
    n = EpisodeStore.open(store_with_rejections).num_episodes
    assert export(store_with_rejections, h5) == n and import_(h5, back) == n
    (a, a_attrs), (b, b_attrs) = everything(store_with_rejections), everything(back)
    assert a.keys() == b.keys() and len(a["meta/rejected/reason"]) > 0
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k
    assert a_attrs == b_attrs


def test_arrays_the_store_gains_come_along(tmp_path):
    """A store with an array the exporter has never heard of (a per-step bool flag) round-trips it."""
    src = tmp_path / "src.zarr"
    layout = {"action": ((2,), "float32"), "reward": ((), "float32"), "attempt": ((), "int16"),
              "success": ((), "bool"), "sim_state": ((3,), "float64"), "obs/policy/cube0_pos": ((3,), "float32"),
              "perturbation/drop": ((), "bool")}
    store = EpisodeStore.create(src, {"env": "Lift-v1"}, layout, {"seed": "uint64", "length": "int64"})
    rng = np.random.default_rng(0)
    for i, T in enumerate((4, 6)):
        ep = {name: rng.normal(size=(T, *tail)).astype(dtype) for name, (tail, dtype) in layout.items()}
        ep["perturbation/drop"] = rng.random(T) < 0.5
        store.append_episode(ep, {"seed": 2**63 + i, "length": T})
    for i in range(7):
        store.append_rejected({"reason": "mix_quota", "seed": i, "round": 0, "slot": i, "length": 3, "n_attempts": 1})
    store.flush()
    export(src, tmp_path / "x.hdf5")
    import_(tmp_path / "x.hdf5", tmp_path / "back.zarr")
    (a, a_attrs), (b, b_attrs) = everything(src), everything(tmp_path / "back.zarr")
    assert a.keys() == b.keys() and len(b["meta/rejected/reason"]) == 7
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    assert a_attrs == b_attrs


def test_file_layout_obs_keys_filter_keys_and_env_type(store_with_rejections, tmp_path):
    import torch

    h5 = tmp_path / "demos.hdf5"
    export(store_with_rejections, h5)
    with h5py.File(h5) as f:
        data = f["data"]
        demos = [k for k in data if k.startswith("demo_")]
        assert sorted(demos) == sorted(data.keys())  # robomimic takes every member of data/ for a demo
        keys = list(data["demo_0/obs"].keys())
        assert "policy__cube0_pos" in keys and "privileged__cube0_pos" in keys
        torch.nn.ModuleDict({k: torch.nn.Identity() for k in keys})  # robomimic's encoder names modules so
        for d in demos:
            obs, nxt = data[d]["obs"], data[d]["next_obs"]
            assert set(nxt) == set(obs)
            for k in obs:
                assert np.array_equal(nxt[k][:-1], obs[k][1:]) and np.array_equal(nxt[k][-1], obs[k][-1])
            assert data[d]["dones"][-1] == 1 and not data[d]["dones"][:-1].any()
        assert json.loads(data.attrs["env_args"])["type"] == 2  # robomimic's EnvType.GYM_TYPE
        train = sorted(x.decode() for x in f["mask/train"][:])
        valid = sorted(x.decode() for x in f["mask/valid"][:])
        assert not set(train) & set(valid) and sorted(train + valid) == sorted(demos)
        assert len(valid) == int(0.1 * len(demos)) >= 1
    assert hdf5.train_valid_split(demos) == hdf5.train_valid_split(list(reversed(demos)))  # deterministic


def test_existing_destinations_are_refused_and_clip_actions_clips_only_the_copy(store_with_rejections, tmp_path):
    h5 = tmp_path / "demos.hdf5"
    export(store_with_rejections, h5)
    before = h5.read_bytes()
    r = subprocess.run([sys.executable, "-m", "datasets.hdf5", "export", str(store_with_rejections), str(h5)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr and h5.read_bytes() == before
    r = subprocess.run([sys.executable, "-m", "datasets.hdf5", "import", str(h5), str(store_with_rejections)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr
    clipped = tmp_path / "clipped.hdf5"
    export(store_with_rejections, clipped, clip_actions=True)
    with h5py.File(h5) as raw, h5py.File(clipped) as f:
        demos = [d for d in f["data"]]
        assert max(abs(f[f"data/{d}/actions"][:]).max() for d in demos) <= 1.0
        assert max(abs(raw[f"data/{d}/actions"][:]).max() for d in demos) > 1.0


def test_import_of_a_foreign_robomimic_style_file(tmp_path):
    src = tmp_path / "robomimic.hdf5"
    with h5py.File(src, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for i, T in enumerate((5, 7)):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = T
            demo.create_dataset("actions", data=np.full((T, 7), 0.5, np.float32))
            demo.create_dataset("obs/robot0_eef_pos", data=np.zeros((T, 3)))
            demo.create_dataset("rewards", data=np.arange(T, dtype=np.float32))
            demo.create_dataset("dones", data=np.eye(T)[-1])
    import_(src, tmp_path / "imported.zarr")
    store = EpisodeStore.open(tmp_path / "imported.zarr")
    assert store.num_episodes == 2 and store.num_steps == 12
    assert store.array("data/obs/policy/robot0_eef_pos").shape == (12, 3)
    assert store.array("data/reward")[:5].tolist() == [0, 1, 2, 3, 4]


def test_a_group_name_with_the_separator_is_refused(tmp_path):
    src = tmp_path / "src.zarr"
    store = EpisodeStore.create(src, {}, {"action": ((1,), "float32"), "obs/my__group/x": ((1,), "float32")},
                                {"seed": "uint64"})
    store.append_episode({"action": np.zeros((2, 1)), "obs/my__group/x": np.zeros((2, 1))}, {"seed": 0})
    store.flush()
    r = subprocess.run([sys.executable, "-m", "datasets.hdf5", "export", str(src), str(tmp_path / "x.hdf5")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "may not contain '__'" in r.stderr and not (tmp_path / "x.hdf5").exists()


def test_files_of_the_previous_layout_still_import(tmp_path):
    """Our files before the key map: obs/<group>.<key>, env_args type a string, no next_obs or masks."""
    src = tmp_path / "old.hdf5"
    with h5py.File(src, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift-v1", "type": "retry_imitation_mujoco", "env_kwargs": {}})
        data.attrs["retry_imitation"] = json.dumps({"env": "Lift-v1", "schema_version": 1})
        data.attrs["retry_imitation_episode_dtypes"] = json.dumps({"seed": "<u8"})
        demo = data.create_group("demo_0")
        demo.attrs.update({"num_samples": 3, "success": True, "seed": 11})
        demo.create_dataset("actions", data=np.full((3, 2), 1.5, np.float32))
        demo.create_dataset("obs/policy.cube0_pos", data=np.ones((3, 3), np.float32))
        demo.create_dataset("obs/privileged.cube0_pos", data=np.zeros((3, 3), np.float32))
        demo.create_dataset("states", data=np.zeros((3, 4)))
        demo.create_dataset("rewards", data=np.zeros(3, np.float32))
        demo.create_dataset("attempt", data=np.zeros(3, np.int16))
        demo.create_dataset("success", data=np.array([False, False, True]))
    import_(src, tmp_path / "old.zarr")
    store = EpisodeStore.open(tmp_path / "old.zarr")
    assert store.array("data/obs/policy/cube0_pos")[:].sum() == 9
    assert store.array("data/obs/privileged/cube0_pos").shape == (3, 3)
    assert store.episode_meta()["seed"].tolist() == [11] and store.array("data/action")[0, 0] == 1.5


@pytest.fixture
def robomimic_utils():
    """robomimic 0.3.0's dataset and obs utilities (its models need torchvision, absent on a CPU torch)."""
    pytest.importorskip("six", reason="robomimic 0.3.0 needs six (undeclared): pip install six")
    try:
        import robomimic.utils.obs_utils as ObsUtils
        from robomimic.config import config_factory
        from robomimic.utils.dataset import SequenceDataset
    except ImportError as exc:
        pytest.skip(f"robomimic 0.3.0 is not installed ({exc}); pip install --no-deps robomimic==0.3.0 six "
                    f"termcolor psutil tqdm")
    return config_factory, ObsUtils, SequenceDataset


def test_robomimic_reads_the_export_with_its_default_configs(store_with_rejections, tmp_path, robomimic_utils):
    config_factory, ObsUtils, SequenceDataset = robomimic_utils
    h5 = tmp_path / "demos.hdf5"
    export(store_with_rejections, h5)
    store = EpisodeStore.open(store_with_rejections)
    with h5py.File(h5) as f:
        keys = sorted(f["data/demo_0/obs"].keys())
    config = config_factory("bc")
    with config.unlocked():
        config.observation.modalities.obs.low_dim = keys
        config.train.data = str(h5)
    # initialize_obs_utils_with_config also checks the encoder cores, which live in the torchvision-bound models
    ObsUtils.initialize_obs_utils_with_obs_specs(obs_modality_specs=[config.observation.modalities])
    # robomimic's base config loads next_obs (BC's turns it off): read with both, and both filter keys
    for load_next_obs in (config.train.hdf5_load_next_obs, config_factory("bcq").train.hdf5_load_next_obs):
        for split in ("train", "valid"):
            ds = SequenceDataset(hdf5_path=str(h5), obs_keys=keys, dataset_keys=config.train.dataset_keys,
                                 load_next_obs=load_next_obs, seq_length=config.train.seq_length,
                                 frame_stack=config.train.frame_stack, hdf5_cache_mode=config.train.hdf5_cache_mode,
                                 filter_by_attribute=split)
            for demo in ds.demos:  # every step of every demo: robomimic's batch holds our raw action
                i = int(demo.split("_")[1])
                ep = store.episode(i)
                start = ds._demo_id_to_start_indices[demo]
                for t in range(len(ep["action"])):
                    sample = ds[start + t]
                    assert np.array_equal(sample["actions"][0], ep["action"][t]), (demo, t)
                    assert np.array_equal(sample["obs"]["policy__cube0_pos"][0], ep["obs/policy/cube0_pos"][t])
                    if load_next_obs:
                        nxt = ep["obs/policy/cube0_pos"][min(t + 1, len(ep["action"]) - 1)]
                        assert np.array_equal(sample["next_obs"]["policy__cube0_pos"][0], nxt)
            ds.close_and_delete_hdf5_handle()
    assert {config.train.hdf5_load_next_obs, config_factory("bcq").train.hdf5_load_next_obs} == {False, True}
    assert np.abs(store.array("data/action")[:]).max() > 1  # raw actions beyond the env bounds came through
