"""stage=eval: the table of every checkpoint on the evaluation seeds, per (policy device, sim device).

Most cases run the stage in-process on the scripted expert (Lift, a few episodes); the command line
and the PPO teacher's reproduction go through the real entry point."""

import json
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir

import pipeline
from common import policies
from common.evaluate import (
    ROUND_STRIDE,
    evaluation_seed,
    finetune_confirm_seed,
    finetune_selection_seed,
    selection_seed,
    student_selection_seed,
)
from common.policies import Policy, register
from envs.base import ConfigError
from tests.test_pipeline import pipeline as run_pipeline
from tests.test_teacher_stage import TINY

KEYS = ("episodes", "successes", "mean_reward", "mean_episode_length", "mean_attempts_to_success")


def config(run, *overrides):
    with initialize_config_dir(config_dir=pipeline.CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger.mode=disabled", f"run_dir={run}", *overrides])
    pipeline.validate(cfg)
    return cfg


def scripted_teacher(run, episodes=6) -> dict:
    from teacher import stage

    return stage.run(config(run, "teacher=scripted", f"teacher.eval_episodes={episodes}"))


def evaluate(run, *overrides) -> dict:
    from evaluation import stage

    stage.run(config(run, *overrides))
    return json.loads((run / "eval.json").read_text())


class Still(Policy):
    """A test kind: the gripper stays where it is (never succeeds); on any device."""

    kind = "test_still"

    def __init__(self, env, device):
        super().__init__(device)
        self.shape = (env.num_envs, env.num_actions)

    def act(self, obs):
        return torch.zeros(self.shape)


@pytest.fixture
def still_kind(monkeypatch):
    monkeypatch.setattr(policies, "LOADERS", dict(policies.LOADERS))  # the registration ends with the test
    register("test_still")(lambda ckpt, env, device: Still(env, device))


def same_numbers(row: dict, teacher: dict) -> bool:
    """The table's numbers agree (a mean over no successes: NaN in teacher_eval.json, null in eval.json)."""
    nan = teacher["mean_attempts_to_success"] != teacher["mean_attempts_to_success"]
    return ({k: row[k] for k in KEYS[:-1]} == {k: teacher[k] for k in KEYS[:-1]}
            and row["mean_attempts"] == (None if nan else teacher["mean_attempts_to_success"]))


def test_eval_of_a_ppo_teacher_reproduces_its_teacher_stage_table_and_is_deterministic(tmp_path, capsys):
    run = tmp_path / "run"
    r = run_pipeline("stage=teacher", *TINY, "teacher.iterations=1", "teacher.select.every=1",
                     "teacher.select.episodes=2", "teacher.eval_episodes=6", "teacher.curriculum.expert_state_share=0",
                     f"run_dir={run}")
    assert r.returncode == 0, r.stderr
    teacher = json.loads((run / "teacher_eval.json").read_text())
    assert "selected" in torch.load(run / "teacher.pt", weights_only=True)  # it acts with the selected weights
    report = evaluate(run, "eval.num_episodes=6")
    row = report["rows"][0]
    assert [row[k] for k in ("policy", "kind", "policy_device")] == ["teacher.pt", "ppo_mlp", "cpu"]
    assert row["sim_device"] == "cpu"
    assert same_numbers(row, teacher) and report["seed"] == evaluation_seed(0)  # the same seeds, env and weights
    assert teacher["mean_reward"] > 0 and 0 < row["mean_episode_length"]
    printed = capsys.readouterr().out
    assert "Mean attempts to success" in printed and "Mean attempts to success" in (run / "eval.md").read_text()
    if not torch.cuda.is_available():
        assert [(x["policy_device"], x["sim_device"]) for x in report["rows"]] == [("cpu", "cpu")]
        assert "cuda is not available" in (run / "eval.md").read_text() and "cuda is not available" in printed

    before = (run / "eval.json").read_bytes()
    with pytest.raises(ConfigError, match="already exists.*overwrite=true"):
        evaluate(run, "eval.num_episodes=6")
    assert (run / "eval.json").read_bytes() == before
    assert evaluate(run, "eval.num_episodes=6", "overwrite=true")["rows"] == report["rows"]  # evaluated again

    ckpt = torch.load(run / "teacher.pt", weights_only=True)  # another observation layout: refused
    ckpt["obs_spec"]["privileged"] = ckpt["obs_spec"]["privileged"][:-1]
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="another 'privileged' observation layout"):
        evaluate(tmp_path / "x", f"eval.ckpt={tmp_path / 'other.pt'}")
    assert not (tmp_path / "x" / "eval.json").exists()


def test_same_seed_same_rows_another_seed_another_sample(tmp_path):
    run = tmp_path / "run"
    scripted_teacher(run)
    ckpt = f"eval.ckpt={run / 'teacher.pt'}"
    a = evaluate(tmp_path / "a", ckpt, "eval.num_episodes=6")
    b = evaluate(tmp_path / "b", ckpt, "eval.num_episodes=6")
    assert a["rows"] == b["rows"] and len(a["rows"]) == 1
    c = evaluate(tmp_path / "c", ckpt, "eval.num_episodes=6", "seed=1")
    assert c["seed"] == evaluation_seed(1) != a["seed"]
    assert c["rows"][0]["mean_reward"] != a["rows"][0]["mean_reward"]  # other scenes, other episode lengths
    # the scripted teacher stage's table is the same evaluation
    assert same_numbers(a["rows"][0], json.loads((run / "teacher_eval.json").read_text()))


def test_injected_failures_at_evaluation(tmp_path):
    run = tmp_path / "run"
    scripted_teacher(run, episodes=2)
    ckpt = f"eval.ckpt={run / 'teacher.pt'}"
    clean = evaluate(tmp_path / "clean", ckpt, "eval.num_episodes=8")
    failing = evaluate(tmp_path / "failing", ckpt, "eval.num_episodes=8", "eval.perturbations.drop_rate=0.5")
    assert failing["perturbations"]["drop_rate"] == 0.5 and clean["perturbations"]["drop_rate"] == 0.0
    assert clean["rows"][0]["mean_attempts"] == 1.0
    assert failing["rows"][0]["mean_episode_length"] > clean["rows"][0]["mean_episode_length"]
    assert failing["rows"][0]["successes"] == 0 or failing["rows"][0]["mean_attempts"] > 1.0
    assert "drop_rate 0.5" in (tmp_path / "failing" / "eval.md").read_text()


def test_default_evaluates_every_checkpoint_of_the_run_in_order_on_the_same_seeds(tmp_path, still_kind, monkeypatch):
    run = tmp_path / "run"
    scripted_teacher(run)
    for name in ("finetuned.pt", "student_rnn.pt", "student.pt", "student_mlp.pt"):
        torch.save({"kind": "test_still", "env_name": "Lift-v1"}, run / name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # rows for cuda where the kind runs there
    report = evaluate(run, "eval.num_episodes=4")
    order = [(r["policy"], r["policy_device"]) for r in report["rows"]]
    # the comparison's order: teacher, the students without and with history, the fine-tuned one
    assert order == [("teacher.pt", "cpu"), ("student_mlp.pt", "cpu"), ("student_mlp.pt", "cuda"),
                     ("student_rnn.pt", "cpu"), ("student_rnn.pt", "cuda"), ("student.pt", "cpu"),
                     ("student.pt", "cuda"), ("finetuned.pt", "cpu"),
                     ("finetuned.pt", "cuda")]  # the scripted expert runs on the CPU only
    comparison = (run / "comparison.md").read_text()
    assert comparison.index("student_mlp.pt") < comparison.index("student_rnn.pt") < comparison.index("finetuned")
    assert all(r["successes"] == 0 and r["mean_attempts"] is None for r in report["rows"][1:])
    alone = evaluate(tmp_path / "alone", f"eval.ckpt={run / 'teacher.pt'}", "eval.num_episodes=4")
    assert {k: alone["rows"][0][k] for k in KEYS} == {k: report["rows"][0][k] for k in KEYS}
    assert "cuda is available" in (run / "eval.md").read_text()


def test_bad_checkpoints_are_one_clear_error_and_write_nothing(tmp_path, still_kind):
    run = tmp_path / "run"
    r = run_pipeline("stage=eval", f"run_dir={run}", "logger.mode=disabled")  # nothing to evaluate yet
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "stage=teacher makes teacher.pt" in lines[0], r.stderr
    assert "eval.ckpt=PATH" in lines[0] and not (run / "eval.json").exists()

    scripted_teacher(run, episodes=2)
    shutil.copy(run / "teacher.pt", tmp_path / "lift.pt")
    with pytest.raises(ConfigError, match="made for Lift-v1, but this run uses Stack-v1"):
        evaluate(tmp_path / "stack", "env=stack", f"eval.ckpt={tmp_path / 'lift.pt'}")
    torch.save({"kind": "diffusion", "env_name": "Lift-v1"}, run / "student.pt")
    with pytest.raises(ConfigError, match=r"kind 'diffusion'.*known: scripted, student, ppo_mlp, test_still"):
        evaluate(run)  # the teacher.pt before it is not evaluated either: checked first
    (run / "student.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        evaluate(run)
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate(run, f"eval.ckpt={tmp_path / 'missing.pt'}")
    assert not (run / "eval.json").exists() and not (run / "eval.md").exists()


def test_evaluation_seeds_stay_apart_from_selection_and_training():
    for seed in range(4):
        rounds = range(64)
        evaluation = {evaluation_seed(seed) + ROUND_STRIDE * r for r in rounds}
        selections = [{fn(seed) + ROUND_STRIDE * r for r in rounds}
                      for fn in (selection_seed, student_selection_seed, finetune_selection_seed,
                                 finetune_confirm_seed)]
        training = {seed, seed + 1, seed + 2, seed + 211, seed + 307} | {seed + 100 + 1000 * r for r in range(8)}
        seen = set(evaluation)
        for selection in selections:  # each selection on its own seeds, none of them the final evaluation's
            assert not seen & selection
            seen |= selection
        assert not seen & training


def test_a_network_policy_carries_its_memory_and_resets_it_where_an_episode_starts():
    """What a student's loader returns (NetworkPolicy): the memory goes from step to step, per env."""
    from common.policies import NetworkPolicy

    class Counter(torch.nn.Module):  # rl/'s policy interface; the action is the steps since the reset
        def initial_memory(self, n, device=None):
            return torch.zeros(n)

        def reset_memory(self, memory, done):
            return torch.where(done, torch.zeros_like(memory), memory)

        def act_inference(self, obs, memory):
            return memory[:, None].expand(-1, 2).clone(), memory + 1

    policy = NetworkPolicy(Counter(), "cpu", kind="counter")
    obs = {"policy": torch.zeros(3, 4)}
    policy.reset(torch.ones(3, dtype=torch.bool))
    assert policy.act(obs)[:, 0].tolist() == [0, 0, 0] and policy.act(obs)[:, 0].tolist() == [1, 1, 1]
    policy.reset(torch.tensor([True, False, False]))
    assert policy.act(obs)[:, 0].tolist() == [0, 2, 2] and policy.kind == "counter"


def test_videos_show_the_episodes_the_table_counted(tmp_path):
    import imageio.v2 as imageio

    run = tmp_path / "run"
    scripted_teacher(run, episodes=2)
    out = tmp_path / "videos_run"
    report = evaluate(out, f"eval.ckpt={run / 'teacher.pt'}", "eval.num_episodes=3", "eval.videos=2")
    videos = report["videos"]
    if "error" in videos[0]:
        pytest.skip(videos[0]["error"])  # no GL on this machine: the table was still written
    assert len(videos) == 2 and [v["env"] for v in videos] == [0, 1]
    row = report["rows"][0]
    with_third = evaluate(tmp_path / "three", f"eval.ckpt={run / 'teacher.pt'}", "eval.num_episodes=3",
                          "eval.videos=3")["videos"]
    # the replay plays the table's episodes: three videos' outcomes and lengths give the row's numbers
    assert sum(v["success"] for v in with_third) == row["successes"]
    assert sum(v["length"] for v in with_third) / 3 == pytest.approx(row["mean_episode_length"])
    for v in videos:
        path = out / "videos" / f"teacher_mujoco_env{v['env']}_{'success' if v['success'] else 'failure'}.gif"
        assert path.is_file() and v["file"] == str(path)
        frames = len(imageio.mimread(path))
        assert frames == -(-v["length"] // 2)  # one per 2 steps, each captioned with its step (the hold
        # on the last frame is the same image: the GIF writer lengthens that frame instead)
