"""One PPO update, readable top to bottom (clipped surrogate, GAE from storage, adaptive KL lr).

Nothing here clips an action or the std: the log-probs are of the raw stored actions, and the
log-std parameter moves freely. The only clamp is PPO's own clamp of the probability *ratio*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from rl.networks import split_parameters
from rl.recurrent_storage import RecurrentRolloutStorage, reads_prev_action
from rl.storage import RolloutStorage

if TYPE_CHECKING:  # only a type here: PPO (the teacher's too) need not import the dataset readers
    from rl.demo_sequences import DemoSequences


@dataclass
class PPOConfig:
    learning_rate: float = 1e-3
    schedule: str = "adaptive"  # adaptive (from the measured KL) | fixed
    desired_kl: float = 0.01
    lr_min: float = 1e-5
    lr_max: float = 1e-2
    gamma: float = 0.99
    lam: float = 0.95
    clip_param: float = 0.2
    num_epochs: int = 5
    num_minibatches: int = 4
    value_loss_coef: float = 1.0
    use_clipped_value_loss: bool = True
    entropy_coef: float = 0.0  # off by default; the action spread is logged instead
    max_grad_norm: float = 1.0
    # Imitation kept in the update (DAPG, Rajeswaran et al. 2018): + bc_coef * bc_decay**k times the
    # squared error of the policy mean against demonstrated raw actions, k counting actor updates.
    # Only with demonstrations set (set_demonstrations: (obs, action) pairs for an MLP policy;
    # set_demonstration_sequences: windows of demonstrated episodes for a recurrent one); the std is left to PPO.
    bc_coef: float = 0.0
    bc_decay: float = 1.0
    # Penalty on the policy mean beyond the env's action bounds [-1, 1] (rl_games' bounds_loss_coef):
    # + bounds_coef * mean over the batch of sum_a relu(|mu_a| - 1)^2. The env clips at its boundary, so
    # PPO's mean can drift far past it where the excess changes nothing, and a student then imitates
    # numbers the env discards. A penalty, not a clamp: actions and the std stay raw.
    bounds_coef: float = 0.0
    # Online distillation from a privileged teacher (DAgger, Ross et al. 2011, kept inside the update): +
    # teacher_coef * teacher_decay**k times the squared error of the policy mean against the teacher's raw
    # actions at the states of this rollout (the storage's ``teacher_actions``, from RecurrentRolloutStorage.label).
    # Unlike bc_coef's fixed demonstrations these are the student's own states, so it learns to recover from
    # its own mistakes; and it costs no extra forward pass (the update's own means are compared).
    teacher_coef: float = 0.0
    teacher_decay: float = 1.0


class NonFiniteError(RuntimeError):
    """A NaN or inf in a loss, gradient or reward: training stops and no checkpoint is written."""


def gaussian_kl(mu_old, std_old, mu_new, std_new) -> torch.Tensor:
    """KL(old || new) of diagonal Gaussians, summed over the action dimension: (B,)."""
    return (torch.log(std_new / std_old)
            + (std_old.pow(2) + (mu_old - mu_new).pow(2)) / (2.0 * std_new.pow(2)) - 0.5).sum(-1)


def adapt_learning_rate(lr: float, kl: float, cfg: PPOConfig) -> float:
    """rsl_rl's rule: shrink the step when the policy moved too far, grow it when it barely moved."""
    if kl > 2.0 * cfg.desired_kl:
        return max(cfg.lr_min, lr / 1.5)
    if 0.0 < kl < cfg.desired_kl / 2.0:
        return min(cfg.lr_max, lr * 1.5)
    return lr


def valid_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of x (B,) or (B, L) over its valid elements (``valid`` of x's shape; None: all of them, the
    plain mean, so a rollout without masked steps is computed exactly as before). Selected, not
    multiplied by the mask: a masked element gives no gradient even where it is huge. A minibatch of
    masked steps only (late sequences of envs that finished early) gives 0, not the NaN of an empty mean."""
    if valid is None:
        return x.mean()
    return x[valid].sum() / valid.sum().clamp_min(1)


def bounds_loss(mean: torch.Tensor, bound: float = 1.0, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the (valid) batch of sum over actions of relu(|mu| - bound)^2: zero (and no gradient) inside."""
    return valid_mean(torch.relu(mean.abs() - bound).pow(2).sum(-1), valid)


class PPO:
    def __init__(self, policy: nn.Module, cfg: PPOConfig, generator: torch.Generator | None = None):
        if cfg.schedule not in ("adaptive", "fixed"):
            from envs.base import ConfigError

            raise ConfigError(f"ppo.schedule={cfg.schedule!r}; choose adaptive or fixed")
        self.policy, self.cfg = policy, cfg
        self.learning_rate = cfg.learning_rate
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
        self.generator = generator
        # Clipped apart (see update); the policy interface names the critic's parameters "critic*".
        self.actor_params, self.critic_params = split_parameters(policy)
        self.demo_obs: dict | None = None
        self.demo_actions: torch.Tensor | None = None
        self.demo_sequences: DemoSequences | None = None
        self.actor_updates = 0

    def set_demonstrations(self, obs: dict, actions: torch.Tensor) -> None:
        """Demonstrated (obs groups of (M, D), raw actions (M, A)) for the imitation term of an MLP policy."""
        self.demo_obs, self.demo_actions = obs, actions

    def set_demonstration_sequences(self, sequences: DemoSequences) -> None:
        """Demonstrated episodes for the imitation term of a student (``evaluate_actor``): each minibatch
        of B sequences adds the error on B windows of them, each from a fresh memory rebuilt over its
        burn-in; a flat minibatch of B steps (an MLP student) on ceil(B / seq_len) windows, about B steps."""
        if not hasattr(self.policy, "evaluate_actor"):
            raise ValueError("demonstration sequences are for a student policy (evaluate_actor); give an MLP "
                             "actor-critic (obs, action) pairs with set_demonstrations")
        self.demo_sequences = sequences

    def _imitation_loss(self, batch_size: int) -> torch.Tensor | None:
        """coef * the squared error of the policy mean against the demonstrated raw actions (mean over
        steps and action dims), on ``batch_size`` samples: pairs, or windows for a recurrent policy."""
        coef = self.cfg.bc_coef * self.cfg.bc_decay ** self.actor_updates
        if coef <= 0:
            return None
        if self.demo_sequences is not None:  # a student (every kind goes through the sequence path)
            return coef * self._sequence_imitation_error(batch_size)
        if self.demo_actions is None:
            return None
        idx = torch.randint(0, len(self.demo_actions), (batch_size,), generator=self.generator)
        dist, _ = self.policy.act({k: v[idx] for k, v in self.demo_obs.items()})
        return coef * (dist.mean - self.demo_actions[idx]).pow(2).mean()

    def _sequence_imitation_error(self, batch_size: int) -> torch.Tensor:
        """Mean over the windows' valid steps (the real ones after the burn-in) of the squared error
        averaged over action dims. The burn-in rebuilds the memory from zero without gradient (R2D2, and
        as behaviour cloning trains: bc.burn_in runs under no_grad, bc.memory_start=carry detaches), then
        the last L steps run from it with gradient: the same forward as the whole window in one pass
        (tested), at about half its cost (backprop through the burn-in was ~2/3 of the term's time)."""
        windows = self.demo_sequences.sample(batch_size, self.generator)
        device = self.actor_params[0].device  # a no-op when the sequences were moved there (DemoSequences.to)
        B = self.demo_sequences.B
        obs = {k: v.to(device) for k, v in windows["obs"].items()
               if k != "prev_action" or reads_prev_action(self.policy)}  # groups (N, B+L, D)
        obs, starts, memory0 = self.policy.burn_in(obs, windows["starts"].to(device), B)  # (N, L, D), (N, L)
        dist = self.policy.evaluate_actor(obs, memory0, starts)  # Normal over (N, L, A)
        error = (dist.mean - windows["actions"][:, B:].to(device)).pow(2).mean(-1)  # (N, L)
        valid = windows["valid"][:, B:].to(device).float()  # every window has at least one valid step
        return (error * valid).sum() / valid.sum()  # no boolean indexing: no host sync on a GPU

    def _teacher_loss(self, mean: torch.Tensor, batch: dict, valid: torch.Tensor | None) -> torch.Tensor | None:
        """coef * the squared error of the policy mean (B, L, A) against the teacher's raw actions at the same
        rollout steps (mean over action dims, then over the valid steps); None when off or unlabelled."""
        coef = self.cfg.teacher_coef * self.cfg.teacher_decay ** self.actor_updates
        if coef <= 0:
            return None
        if "teacher_actions" not in batch:
            raise ValueError("ppo.teacher_coef > 0 but the rollout has no teacher actions: label the storage "
                             "(RecurrentRolloutStorage.label, the runner's labeller)")
        return coef * valid_mean((mean - batch["teacher_actions"]).pow(2).mean(-1), valid)

    def set_learning_rate(self, lr: float) -> None:
        self.learning_rate = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _minibatches(self, storage: RolloutStorage | RecurrentRolloutStorage):
        """Flat minibatches (B, ...) of a ``RolloutStorage``, or for a recurrent policy minibatches of
        sequences (B, L, ...) with the memory before each (``memory0``) and the episode ``starts``."""
        cfg = self.cfg
        if not hasattr(storage, "sequence_minibatches"):
            if getattr(self.policy, "is_recurrent", False):
                raise ValueError("a recurrent policy needs a RecurrentRolloutStorage (sequences with their memory)")
            return storage.minibatches(cfg.num_minibatches, cfg.num_epochs, self.generator)
        if self.demo_sequences is None and self.demo_actions is not None and cfg.bc_coef > 0:
            raise ValueError("a recurrent policy imitates demonstrated windows, not single (obs, action) pairs: "
                             "use set_demonstration_sequences(DemoSequences(...))")
        return storage.sequence_minibatches(cfg.num_minibatches, cfg.num_epochs, self.generator)

    def update(self, storage: RolloutStorage | RecurrentRolloutStorage, update_actor: bool = True,
               use_critic: bool = True) -> dict:
        """One PPO update. ``update_actor=False`` trains only the critic (critic warm-up on a frozen
        pretrained actor: a fresh critic's advantages would otherwise wreck the actor first).
        ``use_critic=False``: the stored advantages came without a critic, already normalised
        (group-relative, rl/group_advantage.py): no value loss and no rollout-wide normalisation.

        The minibatches are flat (B,) steps, or (B, L) sequences for a recurrent policy: every loss below
        is a mean over their valid elements (``storage.valid``: all unless a group rollout masked the
        steps after an env's first done), so it reads the same either way."""
        cfg = self.cfg
        if hasattr(self.policy, "set_update_actor"):  # a critic on the actor's trunk: none of its gradient in warm-up
            self.policy.set_update_actor(update_actor)
        if not (use_critic or update_actor):
            raise ValueError("an update without the critic and without the actor trains nothing")
        named = [(name, p) for name, p in self.policy.named_parameters() if p.requires_grad]
        # Statistics stay on the device as tensors and are fetched once per update: an .item() per
        # parameter and minibatch is a host sync each, which costs a lot on a GPU.
        sums: dict[str, torch.Tensor] = {}
        device = named[0][1].device
        grad_l2 = torch.zeros(len(named), device=device)  # (P,) summed over minibatches
        grad_max = torch.zeros(len(named), device=device)  # (P,) max over minibatches
        has_grad = [False] * len(named)
        n_batches = 0
        # One host sync per update: with nothing masked every mean is the plain one (bit for bit as before).
        masked = not bool(storage.valid.all())
        all_valid = storage.valid if masked else None
        if use_critic:
            kept = storage.advantages if all_valid is None else storage.advantages[all_valid]
            adv_mean, adv_std = kept.mean(), kept.std() + 1e-8
        for batch in self._minibatches(storage):
            valid = batch["valid"] if masked else None  # (B,) or (B, L) bool
            if use_critic:
                advantages = (batch["advantages"] - adv_mean) / adv_std  # (B,) or (B, L), normalised over the rollout
            else:
                advantages = batch["advantages"]  # group-normalised already
            # a sequence batch also holds the memory before each sequence and the episode starts
            dist, values = self.policy.evaluate(batch["obs"], batch.get("memory0"), batch.get("starts"))
            log_probs = dist.log_prob(batch["actions"]).sum(-1)  # (B,) or (B, L) of the raw actions
            entropy = valid_mean(dist.entropy().sum(-1), valid)

            with torch.no_grad():
                kl_t = valid_mean(gaussian_kl(batch["means"], batch["stds"], dist.mean, dist.stddev), valid)
            if cfg.schedule == "adaptive" and update_actor:
                # the one host sync per minibatch that the schedule needs (as rsl_rl)
                self.set_learning_rate(adapt_learning_rate(self.learning_rate, kl_t.item(), cfg))

            ratio = torch.exp(log_probs - batch["log_probs"])  # (B,) or (B, L)
            surrogate = -advantages * ratio
            surrogate_clipped = -advantages * torch.clamp(ratio, 1.0 - cfg.clip_param, 1.0 + cfg.clip_param)
            policy_loss = valid_mean(torch.max(surrogate, surrogate_clipped), valid)

            returns, old_values = batch["returns"], batch["values"]
            if not use_critic:
                value_loss = values.new_zeros(())  # no critic: no value loss (and no gradient to it)
            elif cfg.use_clipped_value_loss:
                values_clipped = old_values + (values - old_values).clamp(-cfg.clip_param, cfg.clip_param)
                value_loss = valid_mean(torch.max((values - returns).pow(2), (values_clipped - returns).pow(2)), valid)
            else:
                value_loss = valid_mean((values - returns).pow(2), valid)

            loss = cfg.value_loss_coef * value_loss
            imitation = bounds = teacher = None
            if update_actor:
                loss = loss + policy_loss - cfg.entropy_coef * entropy
                imitation = self._imitation_loss(len(advantages))
                if imitation is not None:
                    loss = loss + imitation
                teacher = self._teacher_loss(dist.mean, batch, valid)
                if teacher is not None:
                    loss = loss + teacher
                if cfg.bounds_coef > 0:
                    bounds = bounds_loss(dist.mean, valid=valid)
                    loss = loss + cfg.bounds_coef * bounds
            if not torch.isfinite(loss):
                raise NonFiniteError(f"non-finite PPO loss (policy {policy_loss.item()}, value {value_loss.item()}); "
                                     f"no checkpoint written")
            self.optimizer.zero_grad()
            loss.backward()
            with torch.no_grad():  # before clipping: what each loss asked of each parameter
                has_grad = [ok or p.grad is not None for ok, (_, p) in zip(has_grad, named)]
                l2 = torch.stack([p.grad.norm() if p.grad is not None else p.new_zeros(()) for _, p in named])
                mx = torch.stack([p.grad.abs().max() if p.grad is not None else p.new_zeros(()) for _, p in named])
                grad_l2 += l2
                grad_max = torch.maximum(grad_max, mx)
            # Actor and critic are clipped separately (as rsl_rl): one global norm let whichever
            # loss had the larger gradient shrink the other's step.
            actor_norm = nn.utils.clip_grad_norm_(self.actor_params, cfg.max_grad_norm)
            critic_norm = nn.utils.clip_grad_norm_(self.critic_params, cfg.max_grad_norm)
            total_norm = torch.sqrt(actor_norm ** 2 + critic_norm ** 2)  # the logged norm stays the global one
            if not torch.isfinite(total_norm):
                raise NonFiniteError("non-finite gradient in the PPO update; no checkpoint written")
            self.optimizer.step()

            with torch.no_grad():
                stats = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy, "kl": kl_t,
                         "clip_fraction": valid_mean(((ratio - 1.0).abs() > cfg.clip_param).float(), valid),
                         "grad_norm": total_norm,
                         "imitation_loss": loss.new_zeros(()) if imitation is None else imitation,
                         "teacher_loss": loss.new_zeros(()) if teacher is None else teacher,
                         # logged whether or not it is in the loss: how far past the bounds the mean sits
                         "bounds_loss": bounds_loss(dist.mean, valid=valid) if bounds is None else bounds}
                for k, v in stats.items():
                    sums[k] = sums[k] + v if k in sums else v.detach().clone()
            n_batches += 1
        keys = list(sums)
        means = (torch.stack([sums[k] for k in keys]) / n_batches).tolist()  # one fetch for all statistics
        out = dict(zip(keys, means))
        l2_mean, mx_all, present = (grad_l2 / n_batches).tolist(), grad_max.tolist(), has_grad
        out.update({f"grad_l2/{name}": v for (name, _), v, ok in zip(named, l2_mean, present) if ok})
        out.update({f"grad_max/{name}": v for (name, _), v, ok in zip(named, mx_all, present) if ok})
        out["learning_rate"] = self.learning_rate
        self.actor_updates += int(update_actor)
        returns = storage.returns.flatten() if all_valid is None else storage.returns[all_valid]
        values = storage.values.flatten() if all_valid is None else storage.values[all_valid]
        residual = (returns - values).var()
        explained = float(1.0 - residual / returns.var()) if returns.var() > 0 else math.nan
        out["explained_variance"] = explained if use_critic else math.nan  # no critic to explain anything
        out["returns_var"] = returns.var().item()
        return out
