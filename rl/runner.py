"""The on-policy loop: collect a rollout, bootstrap time-outs, update, log, checkpoint, resume.

Reproducible and resumable: action noise and minibatch order come from the runner's own torch
generators, the env's randomness is counter-based, and a checkpoint carries the generators, the
optimizer, the normaliser and the full env state, so resuming at iteration k gives the same
metrics after k as an uninterrupted run.

A recurrent policy (a student, rl/student_actor_critic.py) is rolled out by
``rl.recurrent_storage.collect_rollout`` into sequences of ``seq_len`` steps with the memory each starts
from; the runner carries the memory and the previous action from rollout to rollout, and a checkpoint
carries them too (with the storage's episode-start flags), so its resume is exact as well.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from rl.ppo import PPO, NonFiniteError, PPOConfig
from rl.recurrent_storage import (
    RecurrentRolloutStorage,
    RolloutCarry,
    carry_inputs,
    collect_rollout,
    memory_env_dims,
    memory_from_state,
    memory_state,
    reads_prev_action,
    sample_raw,
    student_cfg,
)
from rl.storage import RolloutStorage


@dataclass
class RunnerConfig:
    num_steps_per_env: int = 24
    num_iterations: int = 300
    seed: int = 0
    save_every: int = 50  # iterations between checkpoints (and one at the end)
    random_initial_lengths: bool = True  # desynchronise resets once, at the start
    episode_window: int = 200  # finished episodes in the rolling success / return statistics
    critic_warmup_iterations: int = 0  # first iterations train only the critic (pretrained actors)
    # The step the actor's first update starts from (pretrained actors). The adaptive schedule raises
    # it by 1.5x per minibatch while the KL allows but lowers it only as fast: an imitating actor
    # started at 1e-3 moved by a KL of ~13 in its first update, which undid the imitation.
    actor_start_learning_rate: float | None = None
    seq_len: int = 8  # recurrent policies: steps per stored sequence (num_steps_per_env must be a multiple)


class OnPolicyRunner:
    def __init__(self, env, policy, ppo_cfg: PPOConfig, cfg: RunnerConfig, logger=None,
                 on_reset: Callable[[object, torch.Tensor, torch.Tensor], bool] | None = None,
                 checkpoint_meta: dict | None = None, selector=None):
        self.env, self.policy, self.cfg, self.logger = env, policy, cfg, logger
        # selector: due(iteration, last) -> bool and consider(iteration, policy) -> dict of metrics,
        # called before the first update and after due ones, keeps the best weights by its own
        # measure (common/selection.py); state_dict()/load_state_dict() for resume.
        self.selector = selector
        # on_reset(env, ids, success): told which episodes just ended and whether they succeeded, it may
        # set the state of those freshly reset envs (e.g. expert states) and returns True if it did.
        # Optional methods: stats() -> dict merged into the metrics; state_dict()/load_state_dict() for resume.
        self.on_reset = on_reset
        self.meta = checkpoint_meta or {}
        self.action_gen = torch.Generator().manual_seed(cfg.seed)
        self.batch_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.ppo = PPO(policy, ppo_cfg, generator=self.batch_gen)
        self.recurrent = bool(getattr(policy, "is_recurrent", False))
        if self.recurrent:
            # the student's group and the critic's (and the previous action when the student reads it)
            obs_dims = {g: env.obs_spec.dim(g) for g in (student_cfg(policy).group, policy.critic_obs)}
            if reads_prev_action(policy):
                obs_dims["prev_action"] = env.num_actions
            self.storage = RecurrentRolloutStorage(cfg.num_steps_per_env, env.num_envs, obs_dims, env.num_actions,
                                                   cfg.seq_len, memory_env_dims(policy))
        else:
            obs_dims = {g: policy.cfg.actor_dim if g == policy.cfg.actor_obs else policy.cfg.critic_dim
                        for g in {policy.cfg.actor_obs, policy.cfg.critic_obs}}
            self.storage = RolloutStorage(cfg.num_steps_per_env, env.num_envs, obs_dims, env.num_actions)
        self.iteration = 0
        self.episodes: deque = deque(maxlen=cfg.episode_window)
        self.obs = None
        self.memory = self.prev_action = None  # recurrent: the carry between rollouts (None: fresh)

    # ------------------------------------------------------------------ rollout
    def _sample(self, dist) -> torch.Tensor:
        return sample_raw(dist, self.action_gen)

    def _check_rewards(self, step: int, rewards: torch.Tensor) -> None:
        if not torch.isfinite(rewards).all():
            bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()
            raise NonFiniteError(f"non-finite reward from envs {bad} at iteration {self.iteration}, step {step}; "
                                 f"no checkpoint written")

    def _episodes_ended(self, next_obs: dict, dones, extras) -> dict:
        """Record finished episodes and let ``on_reset`` set the fresh envs: the obs to act from next."""
        if dones.any():
            ids = torch.nonzero(dones).flatten()
            ep = extras["episode"]
            for i in ids.tolist():
                self.episodes.append((float(ep["return"][i]), float(ep["length"][i]), bool(extras["success"][i])))
            if self.on_reset is not None and self.on_reset(self.env, ids, extras["success"][ids]):
                fresh = self.env.get_observations()
                next_obs = {k: v.clone() for k, v in next_obs.items()}
                for k in next_obs:
                    next_obs[k][ids] = fresh[k][ids]
        return next_obs

    def _after_step(self, step: int, next_obs: dict, rewards, dones, extras) -> dict:
        self._check_rewards(step, rewards)
        return self._episodes_ended(next_obs, dones, extras)

    @torch.no_grad()
    def collect_rollout(self) -> dict:
        if self.recurrent:
            self._collect_recurrent()
        else:
            self._collect_mlp()
        storage, policy = self.storage, self.policy
        actions = storage.actions.reshape(-1, storage.actions.shape[-1])
        return {"action_std": actions.std(0).mean().item(),
                "action_mean_spread": storage.means.reshape(actions.shape).std(0).mean().item(),
                "policy_std": policy.log_std.exp().mean().item(),
                "actions_outside_bounds": (actions.abs() > 1.0).float().mean().item()}

    def _collect_recurrent(self) -> None:
        gamma = self.ppo.cfg.gamma
        carry = RolloutCarry(self.obs, self.memory, self.prev_action)
        carry = collect_rollout(self.env, self.policy, self.storage, carry, self.action_gen, value_fn=self.policy.value,
                                gamma=gamma, on_step=self._after_step)
        self.obs, self.memory, self.prev_action = carry.obs, carry.memory, carry.prev_action
        self.storage.compute_returns(self.policy.value(carry_inputs(carry), carry.memory), gamma, self.ppo.cfg.lam)

    def _collect_mlp(self) -> None:
        env, policy, storage, gamma = self.env, self.policy, self.storage, self.ppo.cfg.gamma
        obs = self.obs
        for step in range(self.cfg.num_steps_per_env):
            dist, _ = policy.act(obs)
            actions = self._sample(dist)  # (N, A)
            values = policy.value(obs)  # (N,)
            log_probs = dist.log_prob(actions).sum(-1)
            next_obs, rewards, dones, extras = env.step(actions)
            self._check_rewards(step, rewards)
            rewards = rewards.clone()
            time_outs = extras["time_outs"]
            if time_outs.any():
                # Bootstrap a truncated episode with the value of its true last state, not the next
                # episode's first state.
                final_values = policy.value(extras["final_obs"])
                rewards[time_outs] += gamma * final_values[time_outs]
            storage.add(obs, actions, rewards, dones, values, log_probs, dist.mean, dist.stddev)
            obs = self._episodes_ended(next_obs, dones, extras)
        self.obs = obs
        storage.compute_returns(policy.value(obs), gamma, self.ppo.cfg.lam)

    # ------------------------------------------------------------------ loop
    def learn(self, num_iterations: int | None = None, checkpoint_path: Path | None = None,
              progress: bool = True) -> dict:
        total = num_iterations if num_iterations is not None else self.cfg.num_iterations
        if self.obs is None:
            self.obs = self.env.reset(seed=self.cfg.seed)
            if self.cfg.random_initial_lengths:
                g = torch.Generator().manual_seed(self.cfg.seed + 2)
                self.env.episode_length_buf = torch.randint(0, self.env.max_episode_length, (self.env.num_envs,),
                                                            generator=g)
        last: dict = {}
        selection: dict = {}
        if self.selector is not None and self.iteration == 0 and self.selector.due(0, total):
            selection = self.selector.consider(0, self.policy)
        columns = [TextColumn("[bold]PPO[/] it {task.completed}/{task.total}"), BarColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn()]
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("ppo", total=total, completed=self.iteration, info="")
            while self.iteration < total:
                t0 = time.perf_counter()
                rollout_stats = self.collect_rollout()
                t1 = time.perf_counter()
                warming_up = self.iteration < self.cfg.critic_warmup_iterations
                if self.iteration == self.cfg.critic_warmup_iterations and self.cfg.actor_start_learning_rate:
                    self.ppo.set_learning_rate(self.cfg.actor_start_learning_rate)
                update_stats = self.ppo.update(self.storage, update_actor=not warming_up)
                # After the update, so the update saw the same normalisation the rollout was sampled with.
                self.policy.update_normalizers({k: v.reshape(-1, v.shape[-1]) for k, v in self.storage.obs.items()})
                self.storage.clear()
                t2 = time.perf_counter()
                self.iteration += 1
                if self.selector is not None and self.selector.due(self.iteration, total):
                    selection = self.selector.consider(self.iteration, self.policy)
                last = {**self._metrics(rollout_stats, update_stats, t1 - t0, t2 - t0), **selection}
                selection = {}
                if self.logger is not None:
                    self.logger.log(last, step=self.iteration)
                bar.update(task, completed=self.iteration,
                           info=f"success {last['success_rate']:.2f}  return {last['mean_return']:.1f}  "
                                f"len {last['mean_episode_length']:.0f}  {last['env_steps_per_s']:.0f} steps/s")
                due = self.iteration % self.cfg.save_every == 0 or self.iteration == total
                if checkpoint_path is not None and due:
                    self.save(checkpoint_path)
        return last

    def _metrics(self, rollout_stats: dict, update_stats: dict, t_rollout: float, t_iter: float) -> dict:
        steps = self.cfg.num_steps_per_env * self.env.num_envs
        eps = list(self.episodes)
        m = {"iteration": self.iteration, "env_steps": self.iteration * steps,
             "success_rate": sum(e[2] for e in eps) / len(eps) if eps else 0.0,
             "mean_return": sum(e[0] for e in eps) / len(eps) if eps else 0.0,
             "mean_episode_length": sum(e[1] for e in eps) / len(eps) if eps else 0.0,
             "env_steps_per_s": steps / t_iter, "s_per_iteration": t_iter, "s_per_rollout": t_rollout}
        m.update(rollout_stats)
        m.update(update_stats)
        if hasattr(self.on_reset, "stats"):
            m.update(self.on_reset.stats())
        return m

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            **self.meta,
            "policy_cfg": self.policy.config_dict(),
            "model": self.policy.state_dict(),
            "optimizer": self.ppo.optimizer.state_dict(),
            "learning_rate": self.ppo.learning_rate,
            "actor_updates": self.ppo.actor_updates,
            "ppo_cfg": asdict(self.ppo.cfg),
            "runner_cfg": asdict(self.cfg),
            "iteration": self.iteration,
            "action_gen": self.action_gen.get_state(),
            "batch_gen": self.batch_gen.get_state(),
            "episodes": [list(e) for e in self.episodes],
            "env_state": self.env.get_state(),
            "on_reset": self.on_reset.state_dict() if hasattr(self.on_reset, "state_dict") else None,
            "selector": self.selector.state_dict() if self.selector is not None else None,
            # recurrent: the carry between rollouts, as plain tensors (weights_only loads it)
            **({"recurrent": {"memory": memory_state(self.memory), "prev_action": self.prev_action,
                              "prev_done": self.storage.prev_done.clone()}} if self.recurrent else {}),
        }

    def save(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".partial")
        torch.save(self.state(), tmp)
        tmp.replace(path)  # atomic: a kill mid-save leaves the previous checkpoint whole

    def load(self, ckpt: dict) -> None:
        self.policy.load_state_dict(ckpt["model"])
        self.ppo.optimizer.load_state_dict(ckpt["optimizer"])
        self.ppo.learning_rate = ckpt["learning_rate"]
        self.ppo.actor_updates = int(ckpt.get("actor_updates", 0))
        self.iteration = int(ckpt["iteration"])
        self.action_gen.set_state(ckpt["action_gen"])
        self.batch_gen.set_state(ckpt["batch_gen"])
        self.episodes = deque([tuple(e) for e in ckpt["episodes"]], maxlen=self.cfg.episode_window)
        if ckpt.get("on_reset") is not None and hasattr(self.on_reset, "load_state_dict"):
            self.on_reset.load_state_dict(ckpt["on_reset"])
        if ckpt.get("selector") is not None and self.selector is not None:
            self.selector.load_state_dict(ckpt["selector"])
        # No env.reset() here: the env state carries each env's base seed and episode counter, so the
        # episodes that start after the resume are the ones the uninterrupted run would have drawn.
        self.env.set_state(torch.arange(self.env.num_envs), ckpt["env_state"])
        self.obs = self.env.get_observations()
        if self.recurrent:
            carry = ckpt["recurrent"]
            self.memory = memory_from_state(self.policy, carry["memory"])
            self.prev_action = carry["prev_action"]
            self.storage.prev_done = carry["prev_done"].clone()
