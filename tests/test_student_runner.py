"""OnPolicyRunner on a recurrent student with a privileged critic: sequences in a RecurrentRolloutStorage, the
memory and previous action carried across rollouts and through a checkpoint (a resumed run continues exactly
as an uninterrupted one), and the critic warm-up leaving the student bitwise unchanged."""

import math

import torch

from rl.ppo import PPOConfig
from rl.recurrent_storage import RecurrentRolloutStorage
from rl.runner import OnPolicyRunner, RunnerConfig
from rl.student.model import build_student
from rl.student_actor_critic import StudentActorCritic

SMALL = {"d_model": 32, "n_heads": 2, "n_layers": 2, "n_memory": 3, "block": 4, "init": "default",
         "head_hidden": [32], "init_std": 1.0, "prev_action": "on"}
N, EPISODE, T, L = 4, 10, 12, 4  # episodes of 10 steps end inside sequences; every env resets in each rollout


def _metrics_without_timing(m):
    return {k: v for k, v in m.items() if not k.startswith(("s_per", "env_steps_per_s"))}


class Recorder:
    def __init__(self):
        self.rows = []

    def log(self, m, step):
        self.rows.append(_metrics_without_timing(m))


def new_runner(make, logger=None, **cfg):
    env = make("pick_loose", num_envs=N, episode_length=EPISODE, num_threads=1)
    torch.manual_seed(0)
    student = build_student("transformer", env.obs_spec, {**SMALL, "action_dim": env.num_actions})
    student.fit_normalizer(env.reset(seed=0)["policy"] * 1.5 + 0.1)  # a normaliser other than the identity
    policy = StudentActorCritic(student, env.obs_spec.dim("privileged"), critic_hidden=[32, 32])
    run_cfg = RunnerConfig(**{"num_steps_per_env": T, "seq_len": L, "num_iterations": 3, "seed": 3,
                              "save_every": 2, **cfg})
    ppo_cfg = PPOConfig(num_epochs=2, num_minibatches=2, learning_rate=1e-3)
    return OnPolicyRunner(env, policy, ppo_cfg, run_cfg, logger=logger)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_a_recurrent_run_resumed_from_a_checkpoint_equals_an_uninterrupted_one(tmp_path, make):
    full = Recorder()
    runner_full = new_runner(make, full)
    assert isinstance(runner_full.storage, RecurrentRolloutStorage)
    assert set(runner_full.storage.obs) == {"policy", "privileged", "prev_action"}  # actor, critic, prev action
    runner_full.learn(progress=False)
    assert len(runner_full.episodes) >= N  # finished episodes are recorded from the recurrent rollout
    assert full.rows[-1]["mean_episode_length"] > 0 and math.isfinite(full.rows[-1]["mean_return"])
    assert runner_full.policy.critic_norm.count == 3 * T * N  # the critic's normaliser saw (T*N, D) per iteration

    part = Recorder()
    ckpt_path = tmp_path / "ckpt.pt"
    new_runner(make, part).learn(num_iterations=2, checkpoint_path=ckpt_path, progress=False)
    ckpt = torch.load(ckpt_path, weights_only=True)
    carry = ckpt["recurrent"]
    assert carry["memory"]["tokens"].abs().sum() > 0  # a memory mid-episode, not the initial one
    assert carry["prev_action"].abs().sum() > 0 and carry["prev_done"].dtype == torch.bool

    resumed = Recorder()
    runner = new_runner(make, resumed)
    runner.load(ckpt)
    assert torch.equal(runner.memory.tokens, carry["memory"]["tokens"])
    episodes_at_resume = runner.env.st["episode_index"].copy()
    runner.learn(progress=False)
    assert (runner.env.st["episode_index"] - episodes_at_resume).min() >= 1  # every env reset after the resume
    assert part.rows == full.rows[:2]
    assert resumed.rows == full.rows[2:]
    weights = runner_full.policy.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in runner.policy.state_dict().items())
    assert torch.equal(runner.memory.tokens, runner_full.memory.tokens)

    # the control: resumed without the carried memory, the run is not the uninterrupted one
    dropped = Recorder()
    runner = new_runner(make, dropped)
    runner.load({**ckpt, "recurrent": {**carry, "memory": None}})
    runner.learn(progress=False)
    assert dropped.rows != full.rows[2:]


def test_critic_warm_up_through_the_runner_leaves_the_student_bitwise_unchanged(make):
    runner = new_runner(make, critic_warmup_iterations=2, actor_start_learning_rate=2e-4)
    student, critic = _state(runner.policy.student), _state(runner.policy.critic)
    lr = runner.ppo.learning_rate
    runner.learn(num_iterations=2, progress=False)
    assert all(torch.equal(v, runner.policy.student.state_dict()[k]) for k, v in student.items())
    assert any(not torch.equal(v, runner.policy.critic.state_dict()[k]) for k, v in critic.items())
    assert runner.ppo.actor_updates == 0 and runner.ppo.learning_rate == lr
    runner.learn(num_iterations=3, progress=False)
    assert runner.ppo.actor_updates == 1
    assert any(not torch.equal(v, runner.policy.student.state_dict()[k]) for k, v in student.items())
