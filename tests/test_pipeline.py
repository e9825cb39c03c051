"""The command-line contract: stages, run directory, exit codes."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


def pipeline(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    for args, expected in [(["stage=fly"], "stage='fly'"), (["env=mars"], "env must be one of"),
                           (["env.num_envs=0"], "env.num_envs"), (["nonsense=1"], "nonsense"),
                           (["env.cube.static_prob=1.5"], "static_prob"), (["collect.workers=0"], "workers"),
                           (["collect.workers=2", "collect.retry_share_target=0.5"], "retry_share_target"),
                           (["teacher=genius"], "teacher must be one of")]:
        r = pipeline(*args, f"run_dir={tmp_path / 'x'}", "logger.mode=disabled")
        assert r.returncode == 2, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,expected", [
    (["collect.num_episodes=-5"], "collect.num_episodes=-5 is out of range; allowed: >= 1"),
    (["collect.num_episodes=abc"], "collect.num_episodes='abc' has the wrong type"),
    (["+collect.foo=1"], "collect.foo is not a config key")])
def test_a_bad_value_is_refused_before_any_stage_runs_and_writes_nothing(args, expected, tmp_path):
    # the commands: they died with a ValueError traceback and exit code 1 inside the stage
    run = tmp_path / "run"
    r = pipeline("stage=collect", "teacher=scripted", *args, f"run_dir={run}", "logger.mode=disabled")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and expected in lines[0], r.stderr
    assert not run.exists()


def test_teacher_stage_scripted_writes_self_describing_checkpoint_and_never_overwrites(tmp_path):
    run = tmp_path / "run"
    r = pipeline("stage=teacher", "teacher=scripted", f"run_dir={run}", "logger.mode=disabled",
                 "teacher.eval_episodes=8", "env.num_envs=8")
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(run / "teacher.pt", weights_only=True)
    assert ckpt["kind"] == "scripted" and ckpt["env_name"] == "Lift-v1"
    assert "policy" in ckpt["obs_spec"] and "privileged" in ckpt["obs_spec"]
    result = json.loads((run / "teacher_eval.json").read_text())
    assert result["episodes"] == 8 and result["success_rate"] >= 0.9
    assert "Successes" in (run / "teacher_eval.md").read_text()
    assert (run / "metrics.jsonl").exists() and (run / "config.yaml").exists()
    before, config = (run / "teacher.pt").read_bytes(), (run / "config.yaml").read_bytes()
    again = pipeline("stage=teacher", "teacher=scripted", f"run_dir={run}", "logger.mode=disabled",
                     "teacher.eval_episodes=4")
    assert again.returncode == 2 and "already exists" in again.stderr
    # refused: neither the checkpoint nor the config of the run that made it is replaced
    assert (run / "teacher.pt").read_bytes() == before and (run / "config.yaml").read_bytes() == config


def test_stage_all_runs_every_stage_and_ends_with_the_comparison_table(tmp_path):
    run = tmp_path / "all"
    r = pipeline("stage=all", "preset=quick", "teacher=scripted", f"run_dir={run}", "logger.mode=disabled",
                 "teacher.eval_episodes=4", "eval.num_episodes=4", "env.episode_length=30",
                 "env.num_envs=4", "collect.num_episodes=4", "collect.num_envs=4", "bc.epochs=1",
                 "bc.eval_episodes=4", "bc.model=mlp", "bc.baselines=[rnn]", "bc.rnn.rnn_hidden=16",
                 "bc.progress=false",
                 "finetune.iterations=2", "finetune.critic_warmup_iterations=1", "finetune.num_envs=4",
                 "finetune.select.every=1", "finetune.select.episodes=4", "finetune.eval_episodes=4",
                 "finetune.progress=false", "finetune.diag_every=1")
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "pipeline_summary.json").read_text())
    assert summary["teacher"]["episodes"] == 4
    assert summary["collect"]["episodes"] == 4 and (run / "dataset.zarr").exists()  # collect read teacher.pt
    assert (run / "plots" / "dataset" / "episodes.png").stat().st_size > 5_000
    assert summary["bc"]["model"] == "mlp" and (run / "student.pt").exists()  # bc read dataset.zarr
    assert summary["bc"]["baselines"]["rnn"]["model"] == "rnn" and (run / "student_rnn.pt").exists()
    assert (run / "bc_baselines.log").exists() and (run / "plots" / "bc_rnn_training.png").exists()
    assert summary["finetune"]["finetuned_ckpt"] == str(run / "finetuned.pt")  # finetune read student.pt
    assert (run / "plots" / "finetune_training.png").exists() and (run / "finetune_eval.md").exists()
    # it ends with the comparison table of what it made, on the teacher stage's own seeds
    rows = json.loads((run / "eval.json").read_text())["rows"]
    assert [(row["policy"], row["label"]) for row in rows if row["policy_device"] == "cpu"] == [
        ("teacher.pt", "teacher (scripted)"), ("student_rnn.pt", "LSTM student"), ("student.pt", "MLP student"),
        ("finetuned.pt", "fine-tuned MLP student")]
    comparison = (run / "comparison.md").read_text()
    assert "fine-tuned MLP student" in comparison and "Mean attempts to success" in comparison
    teacher = json.loads((run / "teacher_eval.json").read_text())
    keys = ("episodes", "successes", "mean_reward", "mean_episode_length", "mean_attempts_to_success")
    assert {k: rows[0][k] for k in keys} == {k: teacher[k] for k in keys}
    assert summary["eval"]["rows"] == rows and "Mean attempts to success" in (run / "eval.md").read_text()
    # where the minutes went: each stage's wall time in the summary and on stdout, in order
    walls = [summary[s]["wall_seconds"] for s in ("teacher", "collect", "bc", "finetune", "eval")]
    assert all(w > 0 for w in walls) and sum(walls) < 300  # the subprocess timeout bounds the whole run
    assert [line.split()[0] for line in r.stdout.splitlines() if " done in " in line] == [
        "[teacher]", "[collect]", "[bc]", "[finetune]", "[eval]"]
    # a single stage run afterwards replaces its own entry of the summary and keeps the others'
    again = pipeline("stage=eval", f"run_dir={run}", "logger.mode=disabled", "overwrite=true", "eval.num_episodes=2",
                     "env.episode_length=30", "env.num_envs=4")
    assert again.returncode == 0, again.stderr
    merged = json.loads((run / "pipeline_summary.json").read_text())
    assert merged["teacher"] == summary["teacher"] and merged["bc"] == summary["bc"]
    assert merged["eval"]["rows"][0]["episodes"] == 2 != summary["eval"]["rows"][0]["episodes"]
    # a summary cut short (a kill mid-write) does not fail a later run at its end: that run's summary alone
    (run / "pipeline_summary.json").write_text('{"teacher": {"epis')
    again = pipeline("stage=eval", f"run_dir={run}", "logger.mode=disabled", "overwrite=true", "eval.num_episodes=2",
                     "env.episode_length=30", "env.num_envs=4")
    assert again.returncode == 0, again.stderr
    assert list(json.loads((run / "pipeline_summary.json").read_text())) == ["eval"] and "unreadable" in again.stdout
