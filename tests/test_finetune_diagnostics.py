"""Fine-tuning's diagnostics: the runner's ``diagnostics`` hook with rl.student.diagnostics.RolloutDiagnostics
logs the student's internals into the metrics row on due iterations only (and leaves the run as it was), it
measures the rollout the student just collected, and rl.plot draws them (``<stage>_internals.png``) and
groups a student's per-parameter gradient norms per module."""

import math

import pytest
import torch

from rl.plot import gradient_groups, plot
from rl.ppo import PPOConfig
from rl.runner import OnPolicyRunner, RunnerConfig
from rl.student.diagnostics import RolloutDiagnostics
from rl.student.model import build_student
from rl.student_actor_critic import StudentActorCritic
from tests.test_student_runner import SMALL, Recorder

N, EPISODE, T, L = 4, 10, 12, 4
TRANSFORMER_KEYS = {"resid_attn/layer0", "resid_attn/layer1", "resid_mlp/layer0", "resid_mlp/layer1",
                    "attn_entropy/layer0/head0", "attn_entropy/layer0/head1",
                    "attn_entropy/layer1/head0", "attn_entropy/layer1/head1", "memory_norm", "memory_norm_max",
                    "memory_update_share", "memory_half_life_median", "memory_half_life_max"}
RNN = {"hidden": [16], "rnn_hidden": 16, "rnn_layers": 1, "head_hidden": [16], "prev_action": "on"}


def _runner(make, kind="transformer", diagnostics=None, logger=None, **cfg):
    env = make("pick_loose", num_envs=N, episode_length=EPISODE, num_threads=1)
    torch.manual_seed(0)
    student = build_student(kind, env.obs_spec, {**(SMALL if kind == "transformer" else RNN),
                                                 "action_dim": env.num_actions})
    policy = StudentActorCritic(student, env.obs_spec.dim("privileged"), critic_hidden=[16])
    run_cfg = RunnerConfig(**{"num_steps_per_env": T, "seq_len": L, "num_iterations": 3, "seed": 3, **cfg})
    return OnPolicyRunner(env, policy, PPOConfig(num_epochs=1, num_minibatches=2, learning_rate=1e-3), run_cfg,
                          logger=logger, diagnostics=diagnostics)


def _internal(row):
    return {k for k in row if k.startswith(("resid_", "attn_entropy/", "memory_norm", "memory_update", "memory_half"))}


def test_the_hook_logs_the_transformer_internals_on_due_iterations_and_changes_nothing_else(make):
    rec, plain = Recorder(), Recorder()
    _runner(make, diagnostics=RolloutDiagnostics(every=2), logger=rec).learn(num_iterations=4, progress=False)
    _runner(make, logger=plain).learn(num_iterations=4, progress=False)
    assert [r["iteration"] for r in rec.rows] == [1, 2, 3, 4]
    assert [bool(_internal(r)) for r in rec.rows] == [False, True, False, True]
    for row in rec.rows[1::2]:
        assert _internal(row) == TRANSFORMER_KEYS and all(math.isfinite(row[k]) for k in TRANSFORMER_KEYS)
        assert 0 < row["memory_norm"] <= row["memory_norm_max"]
        # default init: the branches are on; two heads over more than one key
        assert row["resid_attn/layer0"] > 0 and row["attn_entropy/layer1/head0"] > 0.1
    # no generator drawn from, no weight touched: every other metric is the plain run's
    assert [{k: v for k, v in r.items() if k not in TRANSFORMER_KEYS} for r in rec.rows] == plain.rows


def test_the_measured_windows_are_the_rollout_the_student_collected(make):
    runner = _runner(make)
    runner.obs = runner.env.reset(seed=0)
    runner.collect_rollout()  # T = 12 steps of episodes of 10: every measured env starts one mid-rollout
    diag = RolloutDiagnostics(every=1, num_envs=2)
    obs, starts, memory0, valid = diag.windows(runner.storage, runner.policy.student)
    envs = [0, N // 2]
    assert set(obs) == {"policy", "prev_action"} and obs["policy"].shape[:2] == (2, T)
    assert starts[:, 0].all() and starts[:, EPISODE].all() and starts.sum() == 4 and valid.all()
    dist, _ = runner.policy.student.forward_sequence(obs, starts, memory0)
    # one window of T steps from the first sequence's memory gives the rollout's means again
    torch.testing.assert_close(dist.mean, runner.storage.means[:, envs].transpose(0, 1), atol=1e-5, rtol=1e-5)
    stats = diag(1, runner.storage, runner.policy)
    assert _internal(stats) == TRANSFORMER_KEYS
    assert diag(1, runner.storage, runner.policy) == stats  # deterministic
    assert RolloutDiagnostics(every=0)(1, runner.storage, runner.policy) == {}  # off


def test_an_lstm_student_logs_its_memory_norm_and_no_attention(make):
    rec = Recorder()
    _runner(make, "rnn", diagnostics=RolloutDiagnostics(every=1), logger=rec).learn(num_iterations=2,
                                                                                   progress=False)
    assert all(_internal(r) == {"memory_norm", "memory_norm_max"} for r in rec.rows)
    assert all(0 < r["memory_norm"] <= r["memory_norm_max"] for r in rec.rows)


def test_group_rollouts_are_measured_on_the_steps_before_each_envs_first_done(make):
    rec = Recorder()
    runner = _runner(make, diagnostics=RolloutDiagnostics(every=1), logger=rec, advantage="group", group_size=2)
    runner.learn(num_iterations=1, progress=False)
    assert _internal(rec.rows[0]) == TRANSFORMER_KEYS and rec.rows[0]["valid_fraction"] < 1


def _rows(internals: bool):
    names = ["student.layers.0.attn.qkv.weight", "student.layers.0.fc.weight", "student.layers.1.fc.weight",
             "student.act_emb", "student.head.mlp.0.weight", "critic.0.weight"]
    rows = []
    for i in range(1, 5):
        r = {"iteration": i, "env_steps": 48 * i, "success_rate": 0.1 * i, "mean_return": float(i),
             "demo_start_share": 0.5, "demo_start_success_rate": 0.2, "fresh_success_rate": 0.1,
             **{f"grad_l2/{n}": 0.5 for n in names}, **{f"grad_max/{n}": 0.1 * i for n in names}}
        if internals and i % 2 == 0:
            r.update({k: 1.0 + i for k in TRANSFORMER_KEYS})
        rows.append(r)
    return rows


@pytest.mark.parametrize("internals", [True, False])
def test_plot_writes_the_internals_png_only_from_rows_that_have_them(tmp_path, internals):
    from PIL import Image

    written = plot(_rows(internals), tmp_path, "finetune")
    png = tmp_path / "finetune_internals.png"
    assert [p.name for p in written] == ["finetune_training.png", "finetune_gradients.png"] + (
        ["finetune_internals.png"] if internals else [])
    assert png.exists() == internals
    if internals:  # 5 panels (two residual branches, an entropy panel per layer, memory), 3 a row at 80 dpi
        assert Image.open(png).size == (3 * 4 * 80, 2 * 3 * 80) and png.stat().st_size > 5_000


def test_gradient_groups_sum_a_students_parameters_per_layer_and_leave_the_teachers_alone():
    names = ["student.layers.0.attn.qkv.weight", "student.layers.0.fc.weight", "student.layers.1.fc.weight",
             "student.act_emb", "student.step_emb", "student.head.mlp.0.weight", "student.head.log_std",
             "critic.0.weight", "critic.2.bias"]
    groups = gradient_groups(names)
    assert groups == {"student.layers.0": names[:2], "student.layers.1": [names[2]], "student.(own)": names[3:5],
                      "student.head": names[5:7], "critic": names[7:]}
    teacher = ["actor.0.weight", "actor.0.bias", "critic.0.weight", "log_std"]
    assert gradient_groups(teacher) == {n: [n] for n in teacher}
