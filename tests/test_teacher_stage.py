"""stage=teacher with teacher=ppo end to end (tiny budget), its diagnostics, plots and resume."""

import json
import subprocess
import sys

import pytest
import torch

from common.policies import PolicyTeacher, load_checkpoint
from envs.base import ConfigError
from tests.conftest import ROOT
from tests.test_pipeline import pipeline

TINY = ["teacher=ppo", "teacher.num_envs=8", "teacher.steps_per_env=8", "teacher.eval_episodes=4",
        "teacher.actor_hidden=[32]", "teacher.critic_hidden=[32]", "logger.mode=disabled",
        "teacher.warm_start.expert_steps=20", "teacher.warm_start.bc_steps=50",
        "teacher.warm_start.critic_warmup_iterations=1"]
DIAGNOSTICS = ["success_rate", "mean_return", "mean_episode_length", "kl", "clip_fraction", "value_loss",
               "explained_variance", "returns_var", "learning_rate", "entropy", "action_std", "action_mean_spread",
               "env_steps_per_s", "s_per_iteration", "s_per_rollout"]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"iteration"' in line]


def test_ppo_teacher_stage_trains_logs_plots_and_resumes(tmp_path):
    run = tmp_path / "run"
    r = pipeline("stage=teacher", *TINY, "teacher.iterations=3", f"run_dir={run}")
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(run / "teacher.pt", weights_only=True)
    assert ckpt["kind"] == "ppo_mlp" and ckpt["env_name"] == "Lift-v1" and ckpt["iteration"] == 3
    assert ckpt["policy_cfg"]["actor_obs"] == "privileged" and "eval" in ckpt
    logged = rows(run)
    assert [m["iteration"] for m in logged] == [1, 2, 3]
    for key in DIAGNOSTICS:
        assert all(key in m for m in logged), key
    assert not any(k.startswith("grad_l2/actor.") for k in logged[0])  # critic warm-up: the actor is frozen
    assert any(k.startswith("grad_l2/actor.0") for k in logged[-1])
    assert any(k.startswith("grad_max/") for k in logged[-1])
    assert "warm start" in r.stdout

    for name in ("teacher_training.png", "teacher_gradients.png"):  # the stage draws its curves
        assert (run / "plots" / name).stat().st_size > 10_000
    plots = subprocess.run([sys.executable, "-m", "rl.plot", str(run), "--out", str(tmp_path / "again")], cwd=ROOT,
                           capture_output=True, text=True)
    assert plots.returncode == 0, plots.stderr
    assert (tmp_path / "again" / "teacher_training.png").stat().st_size > 10_000

    again = pipeline("stage=teacher", *TINY, "teacher.iterations=5", "teacher.resume=true", f"run_dir={run}")
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout and "iteration 3" in again.stdout
    assert [m["iteration"] for m in rows(run)] == [1, 2, 3, 4, 5]
    assert torch.load(run / "teacher.pt", weights_only=True)["iteration"] == 5


def test_teacher_checkpoint_for_another_env_is_refused(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save({"kind": "ppo_mlp", "env_name": "Lift-v1"}, path)
    with pytest.raises(ConfigError, match="made for Lift-v1"):
        load_checkpoint(path, "StackPickMulti-v1")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_checkpoint(path, "Lift-v1")


def test_resume_with_the_imitation_term_equals_an_uninterrupted_run(tmp_path, make):
    """The expert pairs are not in the checkpoint; a resumed run rebuilds them and goes on identically,
    also through the episodes that start after the resume (64 steps after it, episodes of 60 at most:
    every env resets)."""
    args = [*TINY, "teacher.ppo.bc_coef=1.0", "teacher.ppo.bc_decay=0.9", "env.episode_length=60"]
    whole = tmp_path / "whole"
    assert pipeline("stage=teacher", *args, "teacher.iterations=16", f"run_dir={whole}").returncode == 0
    split = tmp_path / "split"
    assert pipeline("stage=teacher", *args, "teacher.iterations=8", f"run_dir={split}").returncode == 0
    at_resume = torch.load(split / "teacher.pt", weights_only=True)
    r = pipeline("stage=teacher", *args, "teacher.iterations=16", "teacher.resume=true", f"run_dir={split}")
    assert r.returncode == 0, r.stderr
    keys = ("imitation_loss", "kl", "value_loss", "learning_rate", "success_rate", "mean_return",
            "mean_episode_length")
    a, b = rows(whole), rows(split)
    assert [m["iteration"] for m in b] == list(range(1, 17))
    assert a[-1]["imitation_loss"] > 0
    for x, y in zip(a, b):
        assert {k: x[k] for k in keys} == {k: y[k] for k in keys}
    end_whole = torch.load(whole / "teacher.pt", weights_only=True)
    end_split = torch.load(split / "teacher.pt", weights_only=True)
    assert torch.equal(end_whole["env_state"], end_split["env_state"])  # bit-identical, scenes included
    for name, value in end_whole["model"].items():
        assert torch.equal(value, end_split["model"][name]), name
    env = make("lift", num_envs=8, episode_length=60)  # reads the episode counters out of the states
    env.set_state(torch.arange(8), at_resume["env_state"])
    before = env.st["episode_index"].copy()
    env.set_state(torch.arange(8), end_split["env_state"])
    assert (env.st["episode_index"] - before).min() >= 1  # every env started fresh episodes after the resume


def test_selection_delivers_the_selected_weights_and_reports_both(tmp_path):
    run = tmp_path / "run"
    r = pipeline("stage=teacher", *TINY, "teacher.iterations=2", "teacher.select.every=1", "teacher.select.episodes=4",
                 f"run_dir={run}")
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(run / "teacher.pt", weights_only=True)
    history = ckpt["selector"]["history"]
    assert [it for it, _ in history] == [0, 1, 2]
    selected = ckpt["selected"]
    rates = [rate for _, rate in history]
    assert selected["iteration"] == rates.index(max(rates)) and selected["success_rate"] == max(rates)
    result = json.loads((run / "teacher_eval.json").read_text())
    assert result["selected_iteration"] == selected["iteration"]
    assert ("last_iteration_success_rate" in result) == (selected["iteration"] != 2)
    teacher = PolicyTeacher(ckpt)  # what collection acts with
    for name, value in teacher.policy.state_dict().items():
        assert torch.equal(value, selected["model"][name]), name
    assert [m["selection_iteration"] for m in rows(run)] == [1, 2]


def test_the_teacher_stage_learns_lift_beyond_its_untrained_start(tmp_path):
    """Warm start and two PPO iterations (~9 s): the delivered teacher lifts the cube in its final
    evaluation, where the same network untrained does not."""
    from common.evaluate import evaluate, evaluation_seed
    from envs import make_env
    from rl.networks import MLPActorCritic, MLPPolicyConfig

    run = tmp_path / "run"
    r = pipeline("stage=teacher", "teacher=ppo", "teacher.num_envs=16", "teacher.steps_per_env=16",
                 "teacher.eval_episodes=16", "teacher.actor_hidden=[64,64]", "teacher.critic_hidden=[32]",
                 "logger.mode=disabled", "teacher.warm_start.expert_steps=120", "teacher.warm_start.bc_steps=400",
                 "teacher.warm_start.critic_warmup_iterations=1", "teacher.iterations=2",
                 "teacher.curriculum.expert_state_share=0", "seed=0", f"run_dir={run}")
    assert r.returncode == 0, r.stderr
    trained = json.loads((run / "teacher_eval.json").read_text())
    ckpt = torch.load(run / "teacher.pt", weights_only=True)
    torch.manual_seed(0)
    untrained = PolicyTeacher(policy=MLPActorCritic(MLPPolicyConfig(**ckpt["policy_cfg"])))
    env = make_env({**ckpt["env_cfg"], "num_envs": 16})  # the stage's evaluation env and seeds
    before = evaluate(env, untrained.act, untrained.reset, 16, seed=evaluation_seed(0), progress=False)
    env.close()
    assert before["successes"] == 0
    assert trained["successes"] >= 3 and trained["mean_reward"] > before["mean_reward"] + 1.0
