"""DAgger: ``stage=collect collect.actor=STUDENT`` (the student acts, the PPO teacher labels each state it
visits, failures kept with ``collect.keep=all``), then ``stage=bc bc.extra_datasets=[...] bc.init_ckpt=STUDENT``
(the demonstrations and the labels, from the student's weights)."""

import numpy as np
import pytest
import torch

from bc.stage import run as bc
from collect.collector import round_seed
from collect.stage import run as collect
from common.policies import load_checkpoint, policy_from_checkpoint
from common.rollout import first_episodes
from common.teacher_labels import TeacherLabels
from datasets.store import EpisodeStore
from envs import make_env
from envs.base import ConfigError
from tests.test_finetune_stage import inputs, make_cfg  # noqa: F401  (fixture)
from tests.test_teacher_labels import ppo_teacher  # noqa: F401  (fixture)

DAGGER = ["collect.num_episodes=4", "collect.num_envs=4", "collect.keep=all"]


@pytest.fixture(scope="module")
def dagger_store(tmp_path_factory, inputs, ppo_teacher):  # noqa: F811
    root = tmp_path_factory.mktemp("dagger")
    cfg = make_cfg(root, *DAGGER, f"collect.actor={inputs['student']}", f"collect.teacher_ckpt={ppo_teacher}")
    collect(cfg)
    return cfg, root / "dataset.zarr"


def test_the_student_acts_and_the_store_holds_the_teachers_labels(dagger_store, inputs, ppo_teacher):  # noqa: F811
    cfg, path = dagger_store
    store = EpisodeStore.open(path)
    assert store.attrs["actor"] == "student" and len(store.attrs["actor_sha256"]) == 64
    env = make_env(store.attrs["env_cfg"])  # as collection made it: 4 envs, its injected failures
    teacher_ckpt = load_checkpoint(ppo_teacher, env.cfg.name)
    labels = TeacherLabels(ppo_teacher, teacher_ckpt, env)
    # every stored action is the teacher's label of the stored (privileged) state, not the student's action
    privileged = torch.from_numpy(np.concatenate(
        [store.read(f"data/obs/privileged/{t.entity}_{t.name}") for t in env.obs_spec.groups["privileged"]], 1))
    stored = torch.from_numpy(store.read("data/action"))
    assert torch.allclose(stored, labels({"privileged": privileged}), atol=1e-5)
    # the episodes are the student's: replaying it from the round's seed gives the stored episode lengths
    student = policy_from_checkpoint(load_checkpoint(inputs["student"], env.cfg.name), env)
    played = first_episodes(env, student.act, student.reset, seed=round_seed(int(cfg.seed), 0))
    env.close()
    meta = store.episode_meta()
    assert (meta["round"] == 0).all() and meta["slot"].tolist() == [0, 1, 2, 3]
    assert meta["length"].tolist() == played["length"].tolist()
    # failures are kept (collect.keep=all): a one-epoch student fails on Lift, and its episodes are in the store
    assert store.num_rejected == 0 and store.num_episodes == 4
    assert (~played["success"]).sum() >= 1


def test_dagger_input_is_refused_with_one_line(tmp_path, inputs, ppo_teacher):  # noqa: F811
    with pytest.raises(ConfigError, match="needs a PPO teacher"):  # the scripted teacher cannot label
        collect(make_cfg(tmp_path / "a", *DAGGER, f"collect.actor={inputs['student']}",
                         f"collect.teacher_ckpt={inputs['teacher']}"))
    with pytest.raises(ConfigError, match="retry_share_target"):
        collect(make_cfg(tmp_path / "b", *DAGGER, "collect.retry_share_target=0.5", "teacher=scripted"))
    with pytest.raises(ConfigError, match="does not exist"):
        collect(make_cfg(tmp_path / "c", *DAGGER, f"collect.actor={tmp_path / 'none.pt'}",
                         f"collect.teacher_ckpt={ppo_teacher}"))
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("*.zarr"))


def test_bc_learns_from_demonstrations_and_labels_from_the_students_weights(tmp_path, inputs, dagger_store):  # noqa: F811
    _, extra = dagger_store
    init = torch.load(inputs["student"], weights_only=True)["state_dict"]
    common = [f"bc.dataset={inputs['dataset']}", f"bc.extra_datasets=[{extra}]", "bc.epochs=1", "bc.eval_every=0"]
    # a learning rate of 1e-9: one epoch from bc.init_ckpt ends where it started (weights and normaliser)
    bc(make_cfg(tmp_path / "init", *common, f"bc.init_ckpt={inputs['student']}", "bc.lr=1e-9"))
    ckpt = torch.load(tmp_path / "init" / "student.pt", weights_only=True)
    assert ckpt["dataset"]["used_episodes"] == 6 + 4  # the demonstrations, then DAgger's episodes
    assert ckpt["dataset"]["extra"][0]["path"] == str(extra) and ckpt["init"]["path"] == str(inputs["student"])
    assert "labels" in ckpt["dataset"]["extra"][0]["actions"]
    assert all(torch.allclose(ckpt["state_dict"][k].float(), v.float(), atol=1e-6) for k, v in init.items())
    # without it the same run starts from fresh weights, and its normaliser is fitted on all ten episodes
    bc(make_cfg(tmp_path / "fresh", *common, "bc.lr=1e-9"))
    fresh = torch.load(tmp_path / "fresh" / "student.pt", weights_only=True)["state_dict"]
    assert not torch.allclose(fresh["head.log_std"], init["head.log_std"])
    # a student of another config: one line
    with pytest.raises(ConfigError, match="another config"):
        bc(make_cfg(tmp_path / "other", *common, f"bc.init_ckpt={inputs['student']}",
                    "bc.transformer.d_model=8"))
    with pytest.raises(ConfigError, match="does not exist"):
        bc(make_cfg(tmp_path / "missing", f"bc.dataset={inputs['dataset']}",
                    f"bc.extra_datasets=[{tmp_path / 'nowhere.zarr'}]"))
