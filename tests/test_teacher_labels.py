"""PPO's teacher term (DAgger inside the update, ``ppo.teacher_coef``): a labelled rollout hands each sequence
the teacher's actions at its own steps, the term pulls the student's mean towards them at the student's own
states (raw targets outside the env's bounds included), it is off without a coefficient and refused without
labels; stage=finetune (``finetune.imitation``) labels every rollout with a PPO teacher, takes the run's own
PPO teacher under ``auto`` and the demonstrations otherwise, and refuses a scripted or missing teacher."""

import pytest
import torch

from envs.base import ConfigError
from rl.ppo import PPO, PPOConfig
from tests.test_student_ppo import rollout, setup


def fake_teacher(dim: int, action_dim: int):
    """A fixed function of the privileged state with raw actions up to 3 (outside the env's [-1, 1])."""
    w = torch.randn(dim, action_dim, generator=torch.Generator().manual_seed(7)) / dim ** 0.5
    return lambda obs: 3.0 * torch.tanh(obs["privileged"] @ w)


def gap(policy, storage) -> float:
    """Mean squared distance of the student's means, recomputed over the whole rollout, to the labels."""
    with torch.no_grad():
        batch = next(storage.sequence_minibatches(1, 1, torch.Generator().manual_seed(0)))
        dist = policy.evaluate_actor(batch["obs"], batch["memory0"], batch["starts"])
        return (dist.mean - batch["teacher_actions"]).pow(2).mean().item()


@pytest.mark.parametrize("name", ["transformer", "rnn"])
def test_labels_travel_with_their_steps_into_the_sequence_minibatches(make, name):
    env, policy, storage, carry = setup(make, name)
    rollout(env, policy, storage, carry, torch.Generator().manual_seed(1))
    teacher = fake_teacher(env.obs_spec.dim("privileged"), env.num_actions)
    storage.label(teacher)
    assert storage.teacher_actions.shape == (storage.T, storage.N, env.num_actions)
    for batch in storage.sequence_minibatches(2, 1, torch.Generator().manual_seed(3)):
        B, L = batch["starts"].shape
        expected = teacher({"privileged": batch["obs"]["privileged"].reshape(B * L, -1)}).reshape(B, L, -1)
        assert torch.allclose(batch["teacher_actions"], expected, atol=1e-6)  # one batched pass vs this one
    storage.clear()
    assert storage.teacher_actions is None  # the next rollout is labelled afresh


@pytest.mark.parametrize("name", ["transformer", "rnn"])
def test_the_teacher_term_pulls_the_students_mean_to_the_teachers_actions(make, name):
    gaps = {}
    for coef in (0.0, 10.0):
        env, policy, storage, carry = setup(make, name)
        rollout(env, policy, storage, carry, torch.Generator().manual_seed(1))
        storage.label(fake_teacher(env.obs_spec.dim("privileged"), env.num_actions))
        before = gap(policy, storage)
        ppo = PPO(policy, PPOConfig(teacher_coef=coef, num_epochs=12, num_minibatches=2, learning_rate=3e-3,
                                    schedule="fixed"),
                  generator=torch.Generator().manual_seed(2))
        stats = ppo.update(storage)
        gaps[coef] = gap(policy, storage) / before
        assert (stats["teacher_loss"] > 0) == (coef > 0)
    # PPO alone moves the mean a little either way; with the term it closes a third of the distance or more (the
    # targets reach 3, beyond the bounds: a clipped target could not be approached past 1)
    assert gaps[10.0] < 0.7 and gaps[10.0] < gaps[0.0] - 0.3, gaps


def test_a_teacher_coefficient_without_labels_is_refused(make):
    env, policy, storage, carry = setup(make, "transformer")
    rollout(env, policy, storage, carry, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="no teacher actions"):
        PPO(policy, PPOConfig(teacher_coef=1.0, num_epochs=1, num_minibatches=1)).update(storage)


def test_the_teacher_term_is_only_for_students():
    from rl.networks import MLPActorCritic, MLPPolicyConfig
    from rl.runner import OnPolicyRunner, RunnerConfig
    from tests.toy_env import PointReach

    env = PointReach(num_envs=2)
    policy = MLPActorCritic(MLPPolicyConfig(actor_dim=2, critic_dim=2, action_dim=2))
    with pytest.raises(ValueError, match="student"):
        OnPolicyRunner(env, policy, PPOConfig(), RunnerConfig(), teacher=lambda obs: obs)


# ---- stage=finetune with the teacher term ---------------------------------------------------------------------
from tests.test_finetune_stage import finetune, inputs, no_plots, rows  # noqa: E402,F401  (fixtures)
from tests.test_teacher_stage import TINY as TEACHER_TINY  # noqa: E402


@pytest.fixture(scope="module")
def ppo_teacher(tmp_path_factory):
    """A PPO teacher.pt on the fine-tuning tests' env (a few tiny iterations: only its kind and layout matter)."""
    from teacher.stage import run as teacher
    from tests.test_finetune_stage import make_cfg

    root = tmp_path_factory.mktemp("ft_teacher")
    teacher(make_cfg(root, *TEACHER_TINY, "teacher.iterations=1"))
    return root / "teacher.pt"


def test_stage_labels_every_rollout_with_the_ppo_teacher(inputs, ppo_teacher, tmp_path, no_plots):  # noqa: F811
    out = finetune(tmp_path, inputs, "finetune.imitation=teacher", "finetune.ppo.teacher_coef=2.0",
                   f"finetune.teacher_ckpt={ppo_teacher}")
    metrics = rows(tmp_path)
    assert all(r["teacher_gap"] > 0 for r in metrics)  # every rollout labelled
    # the term is in the actor's loss, so only after the critic warm-up (1 iteration); the demonstrations' is off
    assert metrics[0]["teacher_loss"] == 0 and all(r["teacher_loss"] > 0 for r in metrics[1:])
    assert all(r["imitation_loss"] == 0 for r in metrics)
    ckpt = torch.load(out["finetuned_ckpt"], weights_only=True)
    assert ckpt["finetune"]["teacher"] == str(ppo_teacher) and ckpt["finetune"]["imitation"] == "teacher"


def test_auto_takes_the_runs_ppo_teacher_or_the_demos(inputs, ppo_teacher, tmp_path, no_plots):  # noqa: F811
    import shutil

    shutil.copy(ppo_teacher, tmp_path / "teacher.pt")  # a run directory with a PPO teacher
    finetune(tmp_path, inputs)  # imitation=auto, the default
    assert all(r["teacher_gap"] > 0 and r["imitation_loss"] == 0 for r in rows(tmp_path))
    for run, extra in (("demos", ["finetune.imitation=demos"]), ("scripted", [])):
        if run == "scripted":  # auto beside a scripted teacher.pt: the demonstrations
            (tmp_path / run).mkdir()
            shutil.copy(inputs["teacher"], tmp_path / run / "teacher.pt")
        finetune(tmp_path / run, inputs, *extra)
        metrics = rows(tmp_path / run)
        assert all("teacher_gap" not in r for r in metrics) and metrics[-1]["imitation_loss"] > 0


def test_a_scripted_or_missing_teacher_is_refused(inputs, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="needs a PPO teacher"):
        finetune(tmp_path / "a", inputs, "finetune.imitation=teacher", f"finetune.teacher_ckpt={inputs['teacher']}")
    with pytest.raises(ConfigError, match="does not exist"):
        finetune(tmp_path / "b", inputs, "finetune.imitation=teacher")  # no teacher.pt in its run directory
    assert not any((tmp_path / d / f).exists() for d in "ab" for f in ("finetuned.pt", "metrics.jsonl"))
