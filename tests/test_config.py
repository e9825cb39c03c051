"""The config schema (common/config_schema.py): every value's type and range is refused before any
stage runs, as one line naming the key, the bad value and what is allowed, with exit code 2.

In-process through ``pipeline.precheck`` (what ``python pipeline.py`` runs first) to stay fast; the
command-line cases in tests/test_pipeline.py go through the real entry point."""

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import pipeline
from rl.ppo import PPOConfig
from tests.conftest import ROOT

# (overrides, key, bad value as the error line shows it): a wrong type and an out-of-range value for
# each group's sizes, counts and rates
BAD = [
    (["seed=abc"], "seed", "'abc'"), (["seed=-1"], "seed", "-1"),
    (["stage=fly"], "stage", "'fly'"), (["overwrite=maybe"], "overwrite", "'maybe'"),
    (["env.num_envs=abc"], "env.num_envs", "'abc'"), (["env.num_envs=0"], "env.num_envs", "0"),
    (["env.episode_length=abc"], "env.episode_length", "'abc'"), (["env.substeps=2.5"], "env.substeps", "2.5"),
    (["env.perturbations.drop_rate=x"], "env.perturbations.drop_rate", "'x'"),
    (["env.perturbations.drop_rate=1.5"], "env.perturbations.drop_rate", "1.5"),
    (["env.perturbations.noise_steps=abc"], "env.perturbations.noise_steps", "'abc'"),
    (["env.occlusion.rate=-0.1"], "env.occlusion.rate", "-0.1"),
    (["env.cube.mass=[0.1,x]"], "env.cube.mass", "'x'"), (["env.cube.mass=[0.1,9]"], "env.cube.mass", "9"),
    (["teacher.num_envs=abc"], "teacher.num_envs", "'abc'"), (["teacher.num_envs=0"], "teacher.num_envs", "0"),
    (["teacher.steps_per_env=1.5"], "teacher.steps_per_env", "1.5"),
    (["teacher.steps_per_env=0"], "teacher.steps_per_env", "0"),
    (["teacher.iterations=abc"], "teacher.iterations", "'abc'"), (["teacher.iterations=0"], "teacher.iterations", "0"),
    (["teacher.eval_episodes=-3"], "teacher.eval_episodes", "-3"),
    (["teacher.save_every=0"], "teacher.save_every", "0"),
    (["teacher.init_std=x"], "teacher.init_std", "'x'"), (["teacher.init_std=0"], "teacher.init_std", "0"),
    (["teacher.actor_hidden=[a]"], "teacher.actor_hidden", "'a'"),
    (["teacher.ppo.learning_rate=fast"], "teacher.ppo.learning_rate", "'fast'"),
    (["teacher.ppo.learning_rate=-1e-3"], "teacher.ppo.learning_rate", "-0.001"),
    (["teacher.ppo.gamma=1.5"], "teacher.ppo.gamma", "1.5"), (["teacher.ppo.lam=-0.1"], "teacher.ppo.lam", "-0.1"),
    (["teacher.ppo.num_minibatches=0"], "teacher.ppo.num_minibatches", "0"),
    (["teacher.ppo.num_epochs=two"], "teacher.ppo.num_epochs", "'two'"),
    (["teacher.ppo.schedule=cosine"], "teacher.ppo.schedule", "'cosine'"),
    (["teacher.ppo.use_clipped_value_loss=maybe"], "teacher.ppo.use_clipped_value_loss", "'maybe'"),
    (["teacher.warm_start.batch_size=0"], "teacher.warm_start.batch_size", "0"),
    (["teacher.warm_start.bc_steps=abc"], "teacher.warm_start.bc_steps", "'abc'"),
    (["teacher.select.every=-1"], "teacher.select.every", "-1"),
    (["teacher.select.episodes=0"], "teacher.select.episodes", "0"),
    (["teacher.curriculum.expert_state_share=1.5"], "teacher.curriculum.expert_state_share", "1.5"),
    (["teacher.curriculum.band=0"], "teacher.curriculum.band", "0"),
    (["teacher.train_perturbations.drop_rate=x"], "teacher.train_perturbations.drop_rate", "'x'"),
    (["teacher.train_perturbations.push_rate=2"], "teacher.train_perturbations.push_rate", "2"),
    (["teacher=ppo_multi_cube", "teacher.warm_start.expert_steps=-1"], "teacher.warm_start.expert_steps", "-1"),
    (["teacher=scripted", "teacher.eval_episodes=abc"], "teacher.eval_episodes", "'abc'"),
    (["teacher=scripted", "teacher.eval_episodes=0"], "teacher.eval_episodes", "0"),
    (["collect.num_episodes=abc"], "collect.num_episodes", "'abc'"),
    (["collect.num_episodes=-5"], "collect.num_episodes", "-5"),
    (["collect.workers=x"], "collect.workers", "'x'"), (["collect.workers=0"], "collect.workers", "0"),
    (["collect.num_envs=0"], "collect.num_envs", "0"), (["collect.flush_every=0"], "collect.flush_every", "0"),
    (["collect.max_attempts=many"], "collect.max_attempts", "'many'"),
    (["collect.max_attempts=0"], "collect.max_attempts", "0"),
    (["collect.retry_share_target=half"], "collect.retry_share_target", "'half'"),
    (["collect.retry_share_target=1.5"], "collect.retry_share_target", "1.5"),
    (["collect.perturbations.push_rate=x"], "collect.perturbations.push_rate", "'x'"),
    (["collect.perturbations.push_rate=-0.1"], "collect.perturbations.push_rate", "-0.1"),
    (["bc.model=lstm"], "bc.model", "'lstm'"), (["bc.window=0"], "bc.window", "0"),
    (["bc.perturbed_steps=drop"], "bc.perturbed_steps", "'drop'"), (["bc.lr=fast"], "bc.lr", "'fast'"),
    (["bc.memory_start=bogus"], "bc.memory_start", "'bogus'"),
    (["finetune.critic=none"], "finetune.critic", "'none'"), (["finetune.advantage=td"], "finetune.advantage", "'td'"),
    (["eval.num_episodes=abc"], "eval.num_episodes", "'abc'"), (["eval.num_episodes=0"], "eval.num_episodes", "0"),
    (["eval.num_envs=0"], "eval.num_envs", "0"), (["eval.num_envs=many"], "eval.num_envs", "'many'"),
    (["eval.perturbations.drop_rate=x"], "eval.perturbations.drop_rate", "'x'"),
    (["eval.perturbations.push_rate=1.5"], "eval.perturbations.push_rate", "1.5"),
    (["logger.mode=loud"], "logger.mode", "'loud'"),
]
# what the line says is allowed: a type, a range, or the choices
ALLOWED = ("converted to", "not a valid", "allowed:", "must be", "must satisfy", "choose one of", "positive")

UNKNOWN = [(["nonsense=1"], "nonsense"), (["env.foo=1"], "env.foo"), (["+collect.foo=1"], "collect.foo"),
           (["collect.perturbations.foo=0.1"], "collect.perturbations.foo"),
           (["eval.perturbations.foo=0.1"], "eval.perturbations.foo"),
           (["teacher=scripted", "teacher.num_envs=3"], "teacher.num_envs"), (["+teacher.ppo.lr=1"], "teacher.ppo.lr")]


def refused(overrides, tmp_path, capsys) -> str:
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        pipeline.precheck([*overrides, f"run_dir={run}"])
    assert exit_.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not run.exists()
    return lines[0]


@pytest.mark.parametrize("overrides,key,value", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(overrides, key, value, tmp_path, capsys):
    line = refused(overrides, tmp_path, capsys)
    assert key in line and value in line, line
    assert any(a in line for a in ALLOWED), line


@pytest.mark.parametrize("overrides,key", UNKNOWN, ids=[" ".join(u[0]) for u in UNKNOWN])
def test_an_unknown_key_is_refused_with_the_keys_that_exist(overrides, key, tmp_path, capsys):
    line = refused(overrides, tmp_path, capsys)
    assert f"{key} is not a config key" in line and "the keys of" in line, line


def _compose(overrides):
    with initialize_config_dir(config_dir=pipeline.CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("teacher", ["ppo", "ppo_multi_cube", "ppo_pick_loose", "scripted"])
@pytest.mark.parametrize("preset", ["quick", "full"])
@pytest.mark.parametrize("env", ["lift", "stack", "stack_pick_multi", "pick_loose"])
def test_every_shipped_combination_is_valid_and_the_yamls_keep_the_defaults(env, teacher, preset):
    cfg = _compose([f"env={env}", f"teacher={teacher}", f"preset={preset}"])
    pipeline.validate(cfg)
    assert not OmegaConf.missing_keys(cfg)  # each schema key has its value in a yaml
    # the schema adds no default of its own: the env group is its yaml, preset applied
    shipped = yaml.safe_load((ROOT / "configs" / "env" / f"{env}.yaml").read_text())
    shipped.update(seed=cfg.seed, num_envs=64 if preset == "full" else 16)
    assert OmegaConf.to_container(cfg.env, resolve=True) == shipped


def test_stages_read_the_schema_backed_config_as_before():
    cfg = _compose(["teacher=ppo"])
    assert isinstance(cfg.collect.num_episodes, int) and cfg.teacher.ppo.gamma == 0.99
    PPOConfig(**OmegaConf.to_container(cfg.teacher.ppo))  # what the teacher stage does
    assert OmegaConf.to_container(cfg.collect.perturbations) == {"drop_rate": 0.01, "push_rate": 0.003,
                                                                "noise_rate": 0.005}
    assert cfg.get("teacher").get("sort_cubes") is True and cfg.teacher.kind == "ppo"


def test_threads_sets_torchs_intra_op_threads_and_zero_keeps_the_default():
    import torch

    from pipeline import set_threads

    default = torch.get_num_threads()
    try:
        set_threads(0)
        assert torch.get_num_threads() == default
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(default)
