"""Our VecEnv (the contract in envs/base.py) in rsl-rl-lib 5.5's ``VecEnv`` contract, so its
``OnPolicyRunner`` trains on our tasks unchanged::

    from rsl_rl.runners import OnPolicyRunner
    from envs import make_env
    from envs.rsl_rl import RslRlVecEnv, runner_config
    from rl.ppo import PPOConfig

    env = RslRlVecEnv(make_env(cfg))                   # resets the env: every env starts in a sampled scene
    runner = OnPolicyRunner(env, runner_config(PPOConfig()), log_dir=None, device="cpu")
    runner.learn(100, init_at_random_ep_len=True)
    act = runner.get_inference_policy()                # act(to_tensordict(obs)) -> (N, A) raw actions

What the adapter changes, and why:
- observations: rsl_rl reads a ``TensorDict`` of groups (``obs_groups`` picks them); ours are a dict of
  the same groups, so it only wraps them (no copy).
- ``dones``: rsl_rl's storage wants a number type; ours are bool.
- extras: ``time_outs`` passes through (rsl_rl bootstraps them). Our ``episode`` statistics are
  (N,) tensors valid only where ``done``, but rsl_rl's logger averages every value it is given over
  all its entries, so handing them over as they are would average finished and running envs alike.
  The adapter gives it, per step, the values of the envs that finished (a 1-D tensor each): the
  logger concatenates them over the iteration and takes one mean, which is then the mean over the
  iteration's finished episodes. Steps where nothing finished add nothing. The other extras
  (``final_obs``, ``perturbations``...) are ours and rsl_rl ignores them, so they are dropped.
- ``reset()`` at wrap time: rsl_rl never calls reset; it reads ``get_observations()`` and steps.

rsl_rl and tensordict are imported here only, when an adapter is built, so the package imports
without them (they are the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import torch

# Our per-episode statistics that are not averages: the seed identifies a scene, it is not a metric.
NOT_A_METRIC = ("seed",)


def to_tensordict(obs: dict[str, torch.Tensor]):
    """Our observation dict of (N, D_group) tensors as the TensorDict rsl_rl's models read."""
    from tensordict import TensorDict

    first = next(iter(obs.values()))
    return TensorDict(obs, batch_size=[first.shape[0]], device=first.device)


def finished_episode_stats(done: torch.Tensor, episode: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The statistics of the episodes that ended this step: name -> (n_done,) float32, empty dict if none."""
    if not bool(done.any()):
        return {}
    return {name: values[done].float() for name, values in episode.items() if name not in NOT_A_METRIC}


class RslRlVecEnv:
    """Wraps one of our batched envs for rsl_rl's runners (duck-typed: rsl_rl checks no base class)."""

    def __init__(self, env, seed: int | None = None):
        """``seed``: the base seed of the scenes; ``None`` keeps the env's own (its config's)."""
        env.reset(seed=seed)
        self.env = env
        self.num_envs, self.num_actions = env.num_envs, env.num_actions
        self.max_episode_length = env.max_episode_length
        self.device = env.device
        self.cfg: dict = {}  # rsl_rl's logger records it with the run; our config travels with our runs

    @property
    def episode_length_buf(self) -> torch.Tensor:
        return self.env.episode_length_buf

    @episode_length_buf.setter
    def episode_length_buf(self, value: torch.Tensor) -> None:
        # rsl_rl's init_at_random_ep_len assigns the whole buffer: forward it to the env's setter.
        self.env.episode_length_buf = value

    def get_observations(self):
        return to_tensordict(self.env.get_observations())

    def step(self, actions: torch.Tensor):
        """(N, A) raw actions -> TensorDict obs, (N,) reward, (N,) long done, rsl_rl's extras."""
        obs, reward, done, extras = self.env.step(actions)
        out = {"time_outs": extras["time_outs"]}
        stats = finished_episode_stats(done, extras.get("episode", {}))
        if stats:
            out["episode"] = stats
        return to_tensordict(obs), reward, done.long(), out

    def close(self) -> None:
        self.env.close()


def runner_config(ppo, obs_group: str = "privileged", hidden: tuple[int, ...] = (256, 128, 64),
                  num_steps_per_env: int = 24) -> dict:
    """rsl_rl's OnPolicyRunner config with our PPO's settings: ``ppo`` has rl/ppo.py's PPOConfig fields
    (pass ``PPOConfig()``; taken by duck type because envs/ imports no layer above it). Same net sizes,
    ELU, observation normalisation; actor and critic both read ``obs_group``. (rsl_rl's Gaussian clamps
    its std to [1e-6, 1e6] inside rsl_rl; our own PPO leaves its log-std unclamped.)"""
    return {
        "num_steps_per_env": num_steps_per_env, "save_interval": 10**9, "check_for_nan": True, "multi_gpu": None,
        "obs_groups": {"actor": [obs_group], "critic": [obs_group]},
        "algorithm": {"class_name": "PPO", "num_learning_epochs": ppo.num_epochs,
                      "num_mini_batches": ppo.num_minibatches, "clip_param": ppo.clip_param,
                      "gamma": ppo.gamma, "lam": ppo.lam, "value_loss_coef": ppo.value_loss_coef,
                      "entropy_coef": ppo.entropy_coef, "learning_rate": ppo.learning_rate,
                      "max_grad_norm": ppo.max_grad_norm, "use_clipped_value_loss": ppo.use_clipped_value_loss,
                      "schedule": ppo.schedule, "desired_kl": ppo.desired_kl},
        "actor": {"class_name": "MLPModel", "hidden_dims": list(hidden), "activation": "elu",
                  "obs_normalization": True,
                  "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": 1.0}},
        "critic": {"class_name": "MLPModel", "hidden_dims": list(hidden), "activation": "elu",
                   "obs_normalization": True},
    }
