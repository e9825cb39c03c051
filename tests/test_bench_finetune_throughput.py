"""bench/finetune_throughput.py compares like with like: both sides on the same env config (the teacher's
training perturbations in), the same PPOConfig (ours with the fine-tuning stage's epochs and minibatches under
--preset) and steps per env; ours is the recurrent student with a privileged critic, the baseline the teacher's MLP;
the profile leaves the runner's methods as they were.
A few tiny iterations, no timing asserted."""

import pytest
from hydra import compose, initialize_config_dir

import bench.finetune_throughput as bench
import pipeline
from rl.networks import MLPActorCritic
from rl.recurrent_storage import RecurrentRolloutStorage
from rl.student_actor_critic import StudentActorCritic


def test_both_sides_share_env_and_ppo_settings_and_the_profile_restores_the_runner():
    args = bench.parse_args(["--num-envs", "4", "--steps-per-env", "8", "--fit-steps", "2", "--env-threads", "1",
                             "--preset", "none"])
    ours, baseline, origin = bench.build_sides(args)
    try:
        assert isinstance(ours.runner.policy, StudentActorCritic) and ours.runner.policy.is_recurrent
        assert isinstance(ours.runner.storage, RecurrentRolloutStorage) and ours.runner.storage.L == 8
        assert isinstance(baseline.runner.policy, MLPActorCritic)
        assert ours.runner.policy.critic[0].in_features == ours.env.obs_spec.dim("privileged")
        assert ours.runner.ppo.cfg == baseline.runner.ppo.cfg and ours.runner.cfg == baseline.runner.cfg
        assert ours.env.cfg == baseline.env.cfg and ours.env.cfg.perturbations.drop_rate > 0  # train perturbations
        assert not bool((ours.runner.policy.student.norm.obs_std == 1).all())  # the normaliser was fitted
        assert origin.startswith("fresh")
        ours.timed(1)
        baseline.timed(1)
        for side in (ours, baseline):
            row = side.rounds[-1]
            assert row["env_steps_per_s"] > 0 and row["s_per_rollout"] > 0 and row["s_per_update"] > 0
        profile = bench.profile_student(ours, 1)
        assert profile["update"]["  forward_sequence"]["calls_per_iteration"] > 0
        assert 0 < profile["update_real_step_share"] <= 1
        assert "collect_rollout" not in vars(ours.runner) and "_advance" not in vars(ours.runner.policy.student)
        assert ours.runner.iteration == 2
    finally:
        ours.env.close()
        baseline.env.close()


def test_ours_ppo_overrides_change_ours_alone_and_bad_keys_are_refused():
    args = bench.parse_args(["--num-envs", "2", "--steps-per-env", "8", "--fit-steps", "1", "--env-threads", "1",
                             "--preset", "none", "--ours-ppo", "num_epochs=2", "desired_kl=0.02"])
    ours, baseline, _ = bench.build_sides(args)
    try:
        assert ours.runner.ppo.cfg.num_epochs == 2 and ours.runner.ppo.cfg.desired_kl == 0.02
        assert baseline.runner.ppo.cfg.num_epochs == 5 and baseline.runner.ppo.cfg.desired_kl == 0.01
        assert ours.runner.ppo.cfg.num_minibatches == baseline.runner.ppo.cfg.num_minibatches
    finally:
        ours.env.close()
        baseline.env.close()
    for bad in (["epochs=2"], ["num_epochs"]):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(["--ours-ppo", *bad])
        assert e.value.code == 2


@pytest.mark.parametrize("preset", ["full", "quick"])
def test_ours_takes_the_fine_tuning_stages_epochs_and_minibatches(preset):
    """What ours runs is what `stage=finetune preset=P` runs: the pipeline's own composition of the config."""
    with initialize_config_dir(config_dir=pipeline.CONFIG_DIR, version_base="1.3"):
        stage = compose(config_name="config", overrides=[f"preset={preset}"]).finetune.ppo
    args = bench.parse_args(["--num-envs", "2", "--steps-per-env", "8", "--fit-steps", "1", "--env-threads", "1",
                             "--preset", preset, "--ours-ppo", "desired_kl=0.02"])
    ours, baseline, _ = bench.build_sides(args)
    try:
        assert ours.runner.ppo.cfg.num_epochs == stage.num_epochs
        assert ours.runner.ppo.cfg.num_minibatches == stage.num_minibatches
        assert ours.runner.ppo.cfg.desired_kl == 0.02 and baseline.runner.ppo.cfg.desired_kl == 0.01
        assert baseline.runner.ppo.cfg.num_epochs == bench.load_yaml("teacher", "ppo.yaml")["ppo"]["num_epochs"]
    finally:
        ours.env.close()
        baseline.env.close()


def test_a_preset_the_pipeline_does_not_have_is_refused():
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--preset", "default"])
    assert e.value.code == 2
