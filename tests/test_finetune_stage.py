"""stage=finetune through ``finetune.stage.run``: finetuned.pt (selected and last weights), the critic warm-up,
the imitation term, demo-state resets, advantage=group, critic=shared, bad input, exact resume.

One tiny scripted-expert Lift dataset of 30-step episodes, a tiny BC transformer trained one epoch on it and a
scripted teacher.pt, made once for the module; every fine-tuning run is 4 envs x 8 steps for 2-4 iterations.
The command line (exit code 2, stage=eval) only where the contract is the command line's."""

import json
import math
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir

import pipeline
from common.evaluate import evaluate, evaluation_env_config, finetune_confirm_seed, finetune_selection_seed
from common.policies import NetworkPolicy
from envs import make_env
from finetune.stage import run
from rl.student.checkpoint import load_student
from tests.test_bc import TINY
from tests.test_pipeline import pipeline as cli

ENV = ["env=lift", "env.episode_length=30"]  # the scripted expert succeeds in ~25 steps
FT = [*ENV, "finetune.num_envs=4", "finetune.steps_per_env=8", "finetune.seq_len=8", "finetune.iterations=3",
      "finetune.critic_warmup_iterations=1", "finetune.select.every=1", "finetune.select.episodes=4",
      "finetune.select.confirm_top=2", "finetune.select.confirm_episodes=4",
      "finetune.eval_episodes=4", "finetune.critic_hidden=[16]", "finetune.progress=false",
      "finetune.ppo.num_epochs=1", "finetune.ppo.num_minibatches=2", "finetune.imitation_burn_in=4"]
TIMING = ("time", "env_steps_per_s", "s_per_iteration", "s_per_rollout")
LOG_STD = "head.log_std"


def make_cfg(run_dir, *overrides):
    with initialize_config_dir(config_dir=pipeline.CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY, *ENV, f"run_dir={run_dir}", *overrides])
    pipeline.validate(cfg)
    return cfg


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """{"dataset", "student", "teacher"}: paths of a 6-episode scripted Lift dataset, a tiny BC student trained
    on it for one epoch, and a scripted teacher.pt."""
    from bc.stage import run as bc
    from collect.stage import run as collect
    from teacher.stage import run as teacher

    root = tmp_path_factory.mktemp("ft_inputs")
    collect(make_cfg(root, "teacher=scripted", "collect.num_episodes=6", "collect.num_envs=3"))
    bc(make_cfg(root, f"bc.dataset={root / 'dataset.zarr'}", "bc.epochs=1"))
    teacher(make_cfg(root, "teacher=scripted", "teacher.eval_episodes=4"))
    return {"dataset": root / "dataset.zarr", "student": root / "student.pt", "teacher": root / "teacher.pt"}


@pytest.fixture
def no_plots(monkeypatch):
    """Skip the stage's matplotlib plots (most of a tiny run's time) where a test is not about them."""
    import rl.plot

    monkeypatch.setattr(rl.plot, "plot", lambda *args, **kwargs: [])


def finetune(run_dir, inputs, *overrides) -> dict:
    return run(make_cfg(run_dir, *FT, f"finetune.init_ckpt={inputs['student']}", *overrides))


def rows(run_dir) -> list[dict]:
    """metrics.jsonl's finetune rows without the timing keys, NaN as None (NaN != NaN)."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["stage"] == "finetune":
            out.append({k: None if isinstance(v, float) and math.isnan(v) else v
                        for k, v in r.items() if k not in TIMING})
    return out


def same_weights(a: dict, b: dict, skip=()) -> bool:
    assert set(a) == set(b)
    return all(torch.equal(a[k], b[k]) for k in a if k not in skip)


def init_weights(inputs) -> dict:
    return torch.load(inputs["student"], weights_only=True)["state_dict"]


def replay_selection(cfg, student, confirm: bool = False) -> float:
    """The selector's measure, rebuilt from its parts: the mean action on the selection seeds (or the
    confirmation's)."""
    n = int(cfg.finetune.select.episodes)
    env = make_env(evaluation_env_config(cfg, n))
    player = NetworkPolicy(student)
    seed = finetune_confirm_seed(cfg.seed) if confirm else finetune_selection_seed(cfg.seed)
    episodes = int(cfg.finetune.select.confirm_episodes) if confirm else n
    result = evaluate(env, player.act, player.reset, episodes, seed=seed, progress=False)
    env.close()
    return result["success_rate"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, inputs):
    """3 iterations (the first a critic warm-up), a selection before the first update and after each."""
    run_dir = tmp_path_factory.mktemp("ft_run")
    result = finetune(run_dir, inputs)
    return run_dir, result


def test_stage_writes_a_student_checkpoint_of_the_selected_and_last_weights(finetuned, inputs):
    run_dir, result = finetuned
    path = run_dir / "finetuned.pt"
    student, info = load_student(path, env_name="Lift-v1")
    _, init_info = load_student(inputs["student"], env_name="Lift-v1")
    assert info["kind"] == "student" and info["model_kind"] == init_info["model_kind"]
    assert info["model_config"] == init_info["model_config"]
    ckpt = torch.load(path, weights_only=True)
    record = ckpt["finetune"]
    assert record["iterations"] == 3 and record["init_ckpt"] == str(inputs["student"])
    assert [h["iteration"] for h in record["selection"]] == [0, 1, 2, 3]
    # the selector's best: the first of the highest rates (ties keep the earlier weights). This tiny student
    # fails every selection episode, so that is the start: the BC weights with the fresh log-std
    rates = [h["success_rate"] for h in record["selection"]]
    assert ckpt["selected"]["iteration"] == rates.index(max(rates)) == 0
    assert ckpt["selected"]["success_rate"] == max(rates) == result["selection_success_rate"]
    init = init_weights(inputs)
    assert same_weights(ckpt["state_dict"], init, skip=(LOG_STD,))
    assert torch.equal(ckpt["state_dict"][LOG_STD], torch.full_like(init[LOG_STD], 0.1).log())
    # the last weights are the trained ones (two actor updates after the warm-up), not the selected ones
    assert not same_weights(ckpt["last_state_dict"], ckpt["state_dict"])
    # replaying the selection on the same seeds gives the recorded rates, for the selected and the last weights
    cfg = make_cfg(run_dir, *FT)
    assert replay_selection(cfg, student) == ckpt["selected"]["success_rate"]
    last, _ = load_student(path, env_name="Lift-v1", weights="last")
    assert replay_selection(cfg, last) == record["selection"][-1]["success_rate"]
    # the two best candidates replayed on the confirmation's fresh episodes: the selected weights' row replays
    assert [r["iteration"] for r in record["confirmation"]] == [0, 1]  # all tied at 0%: the earliest first
    assert record["confirmation"][0]["confirm_success_rate"] == replay_selection(cfg, student, confirm=True)
    assert record["selected"]["confirm_success_rate"] == record["confirmation"][0]["confirm_success_rate"]

    metrics = rows(run_dir)
    assert [r["iteration"] for r in metrics] == [1, 2, 3] and all(r["stage"] == "finetune" for r in metrics)
    assert (run_dir / "plots" / "finetune_training.png").stat().st_size > 5_000
    saved = json.loads((run_dir / "finetune_eval.json").read_text())
    assert saved["episodes"] == 4 and saved["policy"] == "finetuned" and saved["success_rate"] == result["success_rate"]
    assert saved["finetune"]["selected"]["selected_iteration"] == 0
    assert "Fine-tuned student" in (run_dir / "finetune_eval.md").read_text()
    assert ckpt["eval"]["mean_reward"] == saved["mean_reward"]

    # stage=eval on finetuned.pt plays the same episodes (evaluation seeds) and reproduces the numbers
    r = cli("stage=eval", *ENV, f"run_dir={run_dir}", f"eval.ckpt={path}", "eval.num_episodes=4",
            "logger.mode=disabled")
    assert r.returncode == 0, r.stderr
    row = [row for row in json.loads((run_dir / "eval.json").read_text())["rows"] if row["policy_device"] == "cpu"][0]
    for key in ("episodes", "successes", "success_rate", "mean_reward", "mean_episode_length"):
        assert row[key] == saved[key], key
    assert saved["mean_reward"] != 0.0  # a number that would differ on other episodes


def test_imitation_term_enters_after_the_warm_up_and_only_with_bc_coef(finetuned, inputs, tmp_path, no_plots):
    run_dir, _ = finetuned  # bc_coef 1 (the default)
    imitation = [r["imitation_loss"] for r in rows(run_dir)]
    assert imitation[0] == 0.0 and all(x > 0 for x in imitation[1:]), imitation
    finetune(tmp_path, inputs, "finetune.ppo.bc_coef=0", "finetune.select.every=0")
    off = rows(tmp_path)
    assert len(off) == 3 and all(r["imitation_loss"] == 0.0 for r in off)
    assert all(any(k.startswith("grad_l2/student.") for k in r) for r in off[1:])  # the actor did train


@pytest.mark.parametrize("init_std", [0.3, None])
def test_critic_warm_up_leaves_the_actor_untouched(inputs, tmp_path, no_plots, init_std):
    finetune(tmp_path, inputs, "finetune.iterations=2", "finetune.critic_warmup_iterations=2",
             "finetune.select.every=0", f"finetune.init_std={'null' if init_std is None else init_std}")
    ckpt = torch.load(tmp_path / "finetuned.pt", weights_only=True)
    init = init_weights(inputs)
    assert same_weights(ckpt["last_state_dict"], init, skip=(LOG_STD,))
    assert same_weights(ckpt["state_dict"], ckpt["last_state_dict"])  # select off: the last weights
    expected = init[LOG_STD] if init_std is None else torch.full_like(init[LOG_STD], init_std).log()
    assert torch.equal(ckpt["last_state_dict"][LOG_STD], expected)
    metrics = rows(tmp_path)
    # the critic did learn, and the actor got no gradient at all
    assert len(metrics) == 2 and all(r["value_loss"] > 0 for r in metrics)
    assert all(any(k.startswith("grad_l2/critic.") for k in r) for r in metrics)
    assert not any(k.startswith("grad_l2/student.") for r in metrics for k in r)


def test_demo_state_resets_are_wired_and_logged(inputs, tmp_path, no_plots):
    finetune(tmp_path, inputs, "finetune.demo_reset_prob=1.0", "finetune.select.every=0", "finetune.ppo.bc_coef=0")
    metrics = rows(tmp_path)
    keys = ("demo_start_share", "demo_start_success_rate", "fresh_success_rate", "demo_start_after_failure_share")
    assert all(k in r for r in metrics for k in keys)
    shares = [r["demo_start_share"] for r in metrics if r["demo_start_share"] is not None]
    assert shares and all(s == 1.0 for s in shares)  # every reset started from a demo state
    assert metrics[-1]["demo_start_share"] == 1.0


def test_group_advantage_runs_without_a_critic(inputs, tmp_path, no_plots):
    result = finetune(tmp_path, inputs, "finetune.advantage=group", "finetune.group_size=2", "finetune.iterations=2",
                      "finetune.select.every=0")
    metrics = rows(tmp_path)
    assert len(metrics) == 2 and all(r["value_loss"] == 0.0 for r in metrics)
    assert all("group_return_std" in r and 0 < r["valid_fraction"] <= 30 / 32 for r in metrics)
    assert all(r["env_steps"] == r["iteration"] * 4 * 32 for r in metrics)  # whole episodes, in sequences of 8
    assert metrics[0]["imitation_loss"] > 0  # no critic to warm up: the actor trains from the first iteration
    assert not any(k.startswith("grad_l2/critic.") for r in metrics for k in r)
    load_student(result["finetuned_ckpt"], env_name="Lift-v1")


def test_shared_critic_runs_and_finetuned_student_loads(inputs, tmp_path, no_plots):
    finetune(tmp_path, inputs, "finetune.critic=shared", "finetune.iterations=2", "finetune.select.every=0")
    student, info = load_student(tmp_path / "finetuned.pt", env_name="Lift-v1")
    ckpt = torch.load(tmp_path / "finetuned.pt", weights_only=True)
    assert ckpt["finetune"]["critic"] == "shared"
    assert set(ckpt["state_dict"]) == set(init_weights(inputs))  # the value head stays out of the student
    assert not same_weights(ckpt["last_state_dict"], init_weights(inputs), skip=(LOG_STD,))  # the actor trained
    assert any(k.startswith("grad_l2/critic_head.") for k in rows(tmp_path)[0])


def files(run_dir) -> dict:
    """What a stage wrote: every file but Hydra's own (.hydra/, pipeline.log), with its bytes."""
    if not run_dir.exists():
        return {}
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file() and ".hydra" not in p.parts and p.name != "pipeline.log"}


def test_bad_input_is_refused_with_exit_code_2_and_writes_nothing(finetuned, inputs, tmp_path):
    done = tmp_path / "done"
    shutil.copytree(finetuned[0], done)
    cases = [
        (tmp_path / "env", [f"finetune.init_ckpt={inputs['student']}", "env=pick_loose"], "trained on Lift-v1"),
        (tmp_path / "teacher", [f"finetune.init_ckpt={inputs['teacher']}"], "not a student"),
        (tmp_path / "missing", [f"finetune.init_ckpt={tmp_path / 'nope.pt'}"], "does not exist"),
        (tmp_path / "steps", [f"finetune.init_ckpt={inputs['student']}", "finetune.steps_per_env=12"],
         "not a multiple of finetune.seq_len"),
        (done, [f"finetune.init_ckpt={inputs['student']}"], "already exists"),
        # a resume with other settings than its finetune_state.pt's (here 8 envs, not 4)
        (done, [f"finetune.init_ckpt={inputs['student']}", "finetune.resume=true", "finetune.num_envs=8"],
         "was made with other settings (train_env_cfg)"),
    ]
    for run_dir, args, expected in cases:
        before = files(run_dir)
        r = cli("stage=finetune", *FT, *args, f"run_dir={run_dir}", "logger.mode=disabled")
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (args, r.stderr)
        assert expected in lines[0], (args, lines[0])
        assert files(run_dir) == before, args  # nothing written, nothing replaced
    assert "finetuned.pt" in files(done)
    assert not (tmp_path / "steps").exists()  # refused before the run directory is made


def test_resume_continues_exactly(inputs, tmp_path, no_plots):
    """4 iterations in one go, and 2 then resumed to 4: the same weights, selection and metrics. With demo resets
    and the imitation term on, so their generators and windows must be restored too."""
    common = ["finetune.select.every=2", "finetune.demo_reset_prob=0.5"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    finetune(whole, inputs, *common, "finetune.iterations=4")
    finetune(parts, inputs, *common, "finetune.iterations=2")
    finetune(parts, inputs, *common, "finetune.iterations=4", "finetune.resume=true")
    a, b = rows(whole), rows(parts)
    assert [r["iteration"] for r in b] == [1, 2, 3, 4]  # continued, not restarted
    assert b == a
    assert any(r["demo_start_share"] for r in a)  # the demo resets did act
    ca, cb = (torch.load(d / "finetuned.pt", weights_only=True) for d in (whole, parts))
    assert same_weights(ca["last_state_dict"], cb["last_state_dict"])
    assert same_weights(ca["state_dict"], cb["state_dict"])
    assert ca["finetune"]["selection"] == cb["finetune"]["selection"]
    assert not same_weights(ca["last_state_dict"], init_weights(inputs), skip=(LOG_STD,))  # it trained


def test_a_stopped_run_delivers_its_best_weights_by_resuming_at_its_last_save(inputs, tmp_path, no_plots):
    """A run killed after its last save: ``finetune.resume=true finetune.iterations=1`` (at or below the saved
    iteration) trains nothing more and writes finetuned.pt from the candidates so far, the weights an uninterrupted
    run of that length delivers (README: Fine-tuning)."""
    common = ["finetune.select.every=1", "finetune.save_every=2"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    finetune(whole, inputs, *common, "finetune.iterations=2")
    finetune(stopped, inputs, *common, "finetune.iterations=2")
    (stopped / "finetuned.pt").unlink()  # as if killed after the save at iteration 2, before the file was written
    lines = (stopped / "metrics.jsonl").read_text()
    finetune(stopped, inputs, *common, "finetune.resume=true", "finetune.iterations=1")  # at or below the state's
    a, b = (torch.load(d / "finetuned.pt", weights_only=True) for d in (whole, stopped))
    assert same_weights(a["state_dict"], b["state_dict"]) and same_weights(a["last_state_dict"], b["last_state_dict"])
    assert a["finetune"]["selection"] == b["finetune"]["selection"]
    assert a["eval"]["successes"] == b["eval"]["successes"]
    trained = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text()[len(lines):].splitlines()]
    assert not [r for r in trained if r["stage"] == "finetune" and "kl" in r]  # no more iterations ran
