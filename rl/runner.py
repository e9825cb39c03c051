"""The on-policy loop: collect a rollout, bootstrap time-outs, update, log, checkpoint, resume.

Reproducible and resumable: action noise and minibatch order come from the runner's own torch
generators, the env's randomness is counter-based, and a checkpoint carries the generators, the
optimizer, the normaliser and the full env state, so resuming at iteration k gives the same
metrics after k as an uninterrupted run.

A recurrent policy (a student, rl/student_actor_critic.py) is rolled out by
``rl.recurrent_storage.collect_rollout`` into sequences of ``seq_len`` steps with the memory each starts
from; the runner carries the memory and the previous action from rollout to rollout, and a checkpoint
carries them too (with the storage's episode-start flags), so its resume is exact as well.

``advantage="group"`` (rl/group_advantage.py): every rollout starts groups of ``group_size`` envs from one
state each, masks each env's steps after its first done, and gives PPO group-relative advantages; the
critic is neither used nor trained. ``group_start(env, leader_ids)`` may set the leaders' states (demo
states); ``on_reset`` and the critic warm-up have no place there and are refused.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from rl.group_advantage import group_targets, reset_groups
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
    advantage: str = "gae"  # gae (critic) | group (GRPO style, no critic: rl/group_advantage.py)
    group_size: int = 8  # advantage=group: envs per group (num_envs must be a multiple)


def check_advantage_config(cfg: RunnerConfig, env, on_reset=None, group_start=None) -> None:
    """One clear ConfigError for a group setting that cannot work."""
    from envs.base import ConfigError

    if cfg.advantage not in ("gae", "group"):
        raise ConfigError(f"advantage={cfg.advantage!r}; choose gae or group")
    if cfg.advantage == "gae":
        if group_start is not None:
            raise ConfigError("a group_start hook needs advantage=group (it sets the state each group starts from)")
        return
    if cfg.group_size < 2 or env.num_envs % cfg.group_size:
        raise ConfigError(f"advantage=group: group_size={cfg.group_size} with {env.num_envs} envs; use a "
                          f"group_size >= 2 that divides num_envs")
    if cfg.num_steps_per_env < env.max_episode_length:
        raise ConfigError(f"advantage=group: num_steps_per_env={cfg.num_steps_per_env} is shorter than an episode "
                          f"({env.max_episode_length} steps); every env must finish one per rollout: raise it")
    if cfg.critic_warmup_iterations > 0:
        raise ConfigError("advantage=group uses no critic: set critic_warmup_iterations=0")
    if on_reset is not None:
        raise ConfigError("advantage=group resets every env at each rollout start: pass the start states as "
                          "group_start, not on_reset")


class OnPolicyRunner:
    def __init__(self, env, policy, ppo_cfg: PPOConfig, cfg: RunnerConfig, logger=None,
                 on_reset: Callable[[object, torch.Tensor, torch.Tensor], bool] | None = None,
                 checkpoint_meta: dict | None = None, selector=None,
                 group_start: Callable[[object, torch.Tensor], None] | None = None,
                 diagnostics: Callable[[int, object, object], dict] | None = None,
                 teacher: Callable[[dict], torch.Tensor] | None = None):
        check_advantage_config(cfg, env, on_reset, group_start)
        self.env, self.policy, self.cfg, self.logger = env, policy, cfg, logger
        # diagnostics(iteration, storage, policy) -> dict, called after each rollout (before the update, the
        # storage as collected; iteration: the metrics row's), its metrics merged into that row ({}: none
        # this time). E.g. rl.student.diagnostics.RolloutDiagnostics: the student's internals. It must not
        # draw from the runner's generators (an exact resume).
        self.diagnostics = diagnostics
        self.group = cfg.advantage == "group"
        self.group_start = group_start  # advantage=group: group_start(env, leader_ids) may set the leaders' states
        # selector: due(iteration, last) -> bool and consider(iteration, policy) -> dict of metrics,
        # called before the first update and after due ones, keeps the best weights by its own
        # measure (common/selection.py); state_dict()/load_state_dict() for resume.
        self.selector = selector
        # on_reset(env, ids, success): told which episodes just ended and whether they succeeded, it may
        # set the state of those freshly reset envs (e.g. expert states) and returns True if it did.
        # Optional methods: stats() -> dict merged into the metrics; state_dict()/load_state_dict() for resume.
        self.on_reset = on_reset
        # whose stats() are logged and whose state_dict() a checkpoint carries: on_reset, or in group mode the
        # object a bound group_start belongs to (finetune's DemoStateResets.start_groups)
        self._hook_owner = on_reset if on_reset is not None else getattr(group_start, "__self__", None)
        self.meta = checkpoint_meta or {}
        self.action_gen = torch.Generator().manual_seed(cfg.seed)
        self.batch_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.ppo = PPO(policy, ppo_cfg, generator=self.batch_gen)
        self.recurrent = bool(getattr(policy, "is_recurrent", False))
        # teacher(obs) -> (M, A) raw actions from obs groups of (M, D) (its ``groups`` are stored as well): every
        # rollout is labelled with it for PPO's teacher term (ppo.teacher_coef; finetune/teacher_labels.py)
        self.teacher = teacher
        if teacher is not None and not self.recurrent:
            raise ValueError("teacher labels are for a student policy (the recurrent storage holds them)")
        if self.recurrent:
            # the student's group and the critic's (and the previous action when the student reads it), and the
            # teacher's when one labels the rollout
            groups = (student_cfg(policy).group, policy.critic_obs, *getattr(teacher, "groups", ()))
            obs_dims = {g: env.obs_spec.dim(g) for g in groups}
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

    # ---- advantage=group
    def _start_groups(self) -> dict:
        self._active = torch.ones(self.env.num_envs, dtype=torch.bool)  # (N,) not done yet in this rollout
        return reset_groups(self.env, self.cfg.group_size, self.group_start)

    def _after_group_step(self, step: int, next_obs: dict, rewards, dones, extras) -> dict:
        """Records only each env's first episode: the later ones are masked and cut by the next reset."""
        self._check_rewards(step, rewards)
        first = dones.bool() & self._active
        self._active &= ~dones.bool()
        return self._episodes_ended(next_obs, first, extras)  # on_reset is None here: it only records

    def _set_group_targets(self) -> dict:
        storage = self.storage
        valid, storage.returns, storage.advantages = group_targets(storage.rewards, storage.dones, self.cfg.group_size)
        storage.valid.copy_(valid)
        episode_return = storage.returns[0]  # (N,) step 0 is valid for every env: its episode return
        return {"valid_fraction": valid.float().mean().item(),
                # 0: every group's G episodes returned the same, so the update has nothing to learn from
                "group_return_std": episode_return.reshape(-1, self.cfg.group_size).std(1, correction=0).mean().item()}

    @torch.no_grad()
    def collect_rollout(self) -> dict:
        if self.recurrent:
            self._collect_recurrent()
        else:
            self._collect_mlp()
        storage, policy = self.storage, self.policy
        group_stats = self._set_group_targets() if self.group else {}
        if self.teacher is not None:
            storage.label(self.teacher)
            # how far the student's own means sit from the teacher's actions at the states it visited
            group_stats["teacher_gap"] = (storage.means - storage.teacher_actions).pow(2).mean().item()
        actions = storage.actions.reshape(-1, storage.actions.shape[-1])
        return {**group_stats, "action_std": actions.std(0).mean().item(),
                "action_mean_spread": storage.means.reshape(actions.shape).std(0).mean().item(),
                "policy_std": policy.log_std.exp().mean().item(),
                "actions_outside_bounds": (actions.abs() > 1.0).float().mean().item()}

    def _collect_recurrent(self) -> None:
        gamma = self.ppo.cfg.gamma
        if self.group:
            # a fresh memory and previous action (RolloutCarry's None) and episode starts at t = 0 for all
            self.storage.prev_done.fill_(True)
            carry = collect_rollout(self.env, self.policy, self.storage, RolloutCarry(self._start_groups()),
                                    self.action_gen, value_fn=None, on_step=self._after_group_step)
            self.obs, self.memory, self.prev_action = carry.obs, carry.memory, carry.prev_action
            return
        carry = RolloutCarry(self.obs, self.memory, self.prev_action)
        carry = collect_rollout(self.env, self.policy, self.storage, carry, self.action_gen, value_fn=self.policy.value,
                                gamma=gamma, on_step=self._after_step)
        self.obs, self.memory, self.prev_action = carry.obs, carry.memory, carry.prev_action
        self.storage.compute_returns(self.policy.value(carry_inputs(carry), carry.memory), gamma, self.ppo.cfg.lam)

    def _collect_mlp(self) -> None:
        env, policy, storage, gamma = self.env, self.policy, self.storage, self.ppo.cfg.gamma
        obs = self._start_groups() if self.group else self.obs
        for step in range(self.cfg.num_steps_per_env):
            dist, _ = policy.act(obs)
            actions = self._sample(dist)  # (N, A)
            values = dist.mean.new_zeros(env.num_envs) if self.group else policy.value(obs)  # (N,)
            log_probs = dist.log_prob(actions).sum(-1)
            next_obs, rewards, dones, extras = env.step(actions)
            if self.group:  # no critic, no bootstrap: the return is the episode's reward sum
                storage.add(obs, actions, rewards.clone(), dones, values, log_probs, dist.mean, dist.stddev)
                obs = self._after_group_step(step, next_obs, rewards, dones, extras)
                continue
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
        if not self.group:
            storage.compute_returns(policy.value(obs), gamma, self.ppo.cfg.lam)

    # ------------------------------------------------------------------ loop
    def learn(self, num_iterations: int | None = None, checkpoint_path: Path | None = None,
              progress: bool = True) -> dict:
        total = num_iterations if num_iterations is not None else self.cfg.num_iterations
        if self.obs is None:
            self.obs = self.env.reset(seed=self.cfg.seed)
            if self.cfg.random_initial_lengths and not self.group:  # groups reset at every rollout start
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
                if self.diagnostics is not None:
                    with torch.no_grad():
                        rollout_stats.update(self.diagnostics(self.iteration + 1, self.storage, self.policy))
                warming_up = self.iteration < self.cfg.critic_warmup_iterations
                if self.iteration == self.cfg.critic_warmup_iterations and self.cfg.actor_start_learning_rate:
                    self.ppo.set_learning_rate(self.cfg.actor_start_learning_rate)
                # (the gae call keeps its old signature: wrappers of ppo.update in the tests stay valid)
                no_critic = {"use_critic": False} if self.group else {}
                update_stats = self.ppo.update(self.storage, update_actor=not warming_up, **no_critic)
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
        if hasattr(self._hook_owner, "stats"):
            m.update(self._hook_owner.stats())
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
            "on_reset": self._hook_owner.state_dict() if hasattr(self._hook_owner, "state_dict") else None,
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
        if ckpt.get("on_reset") is not None and hasattr(self._hook_owner, "load_state_dict"):
            self._hook_owner.load_state_dict(ckpt["on_reset"])
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
