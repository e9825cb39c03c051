"""A behaviour-cloned student as PPO's actor, with a critic beside it (DESIGN.md's ``finetune.critic``).

The actor is the student itself (``self.student``: its parameters are ``student.*``, none starts with
``critic``, so PPO clips them as the actor's). Two critics:
  * ``privileged``: a separate MLP on the ``privileged`` group with its own empirical normaliser (asymmetric:
    it sees the full state the student does not, and trains the student only through the advantages);
  * ``shared``: a value head (``critic_head``) on the student's trunk features, the very vector its
    Gaussian head reads (``step_features`` / ``sequence_features``): the value of what the student has seen.

The policy interface of rl/networks.py, with sequences batch-first as the recurrent storage yields them:
  ``act(obs, memory)``                           the student's one step
  ``act_value(obs, memory) -> (dist, memory, values (N,))``  the step and its value from the same pass
                                                 (collect_rollout uses it: a shared value then comes from the
                                                 features the action came from)
  ``value(obs, memory=None) -> (...,)``          privileged: the critic on any leading dims ((N,) or (B, L));
                                                 shared: one step (N,) from ``memory`` (None: an episode's
                                                 start) whose new memory is dropped, so the carried memory
                                                 does not advance (the time-out bootstrap V(final_obs))
  ``evaluate(obs_seq, memory0, starts)``         (Normal over (B, L, A), values (B, L)) from one
                                                 ``forward_sequence`` of the stored memory
  ``evaluate_actor(obs_seq, memory0, starts)``   the Normal alone (demonstrated windows, no critic)
  ``update_normalizers(obs)``                    the privileged critic's only: the student's input
                                                 normaliser stays as BC fitted it (the actor's input space)
  ``set_update_actor(flag)``                     PPO.update tells the shared critic whether the actor trains
The std is the student head's free log-std parameter: never clamped here either.

Gradients of the shared critic: during the critic warm-up (``update_actor=False``) the value head reads
detached features, so only it trains and the pretrained trunk stays bitwise as it was. Afterwards
``value_grad_to_trunk`` decides; default False: the value loss's gradient (scaled by the return's size,
noisy while the critic is young) would reshape the BC trunk the actor relies on, and PPO clips it with the
actor's norm (trunk parameters are ``student.*``), so it would also take over the policy's step. Keeping
the value head apart protects the pretrained actor (as DPPO-style fine-tuning keeps actor and critic apart);
True lets the trunk learn from the value loss too (parameter sharing as in plain PPO on images).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal

from envs.base import ConfigError
from rl.networks import mlp
from rl.normalizer import EmpiricalNormalizer
from rl.student.head import burn_in

CRITICS = ("privileged", "shared")


class StudentActorCritic(nn.Module):
    def __init__(self, student: nn.Module, critic_dim: int | None = None, critic_hidden: list[int] | None = None,
                 critic_obs: str = "privileged", activation: str = "elu", normalize_obs: bool = True,
                 critic: str = "privileged", value_grad_to_trunk: bool = False):
        super().__init__()
        if critic not in CRITICS:
            raise ConfigError(f"finetune.critic={critic!r}; choose one of {CRITICS}")
        hidden = list(critic_hidden) if critic_hidden is not None else [256, 128, 64]
        self.student = student
        self.critic_kind = critic
        self.value_grad_to_trunk = bool(value_grad_to_trunk)
        self._update_actor = True  # set by PPO.update through set_update_actor
        if critic == "privileged":
            if not critic_dim or critic_dim < 1:
                raise ConfigError(f"finetune.critic=privileged needs critic_dim >= 1 (the {critic_obs!r} group's "
                                  f"width), got {critic_dim!r}")
            self.critic_obs = critic_obs
            self.critic = mlp([critic_dim, *hidden, 1], activation)
            self.critic_norm = EmpiricalNormalizer(critic_dim, enabled=normalize_obs)
        else:
            # the trunk's features are already normalised inputs' features: no normaliser of its own, and the
            # rollout stores only the student's group (critic_obs names it for the runner's storage)
            self.critic_obs = student.cfg.group
            feature_dim = student.head.mlp[0].in_features  # the Gaussian head's input width
            self.critic_head = mlp([feature_dim, *hidden, 1], activation)
        self._config = {"critic": critic, "critic_dim": critic_dim if critic == "privileged" else None,
                        "critic_hidden": hidden, "critic_obs": self.critic_obs, "activation": activation,
                        "normalize_obs": normalize_obs, "value_grad_to_trunk": self.value_grad_to_trunk}

    @classmethod
    def from_config(cls, student: nn.Module, config: dict) -> StudentActorCritic:
        """Rebuild from ``config_dict()`` (its ``student`` entry is the student's own, rebuilt apart with
        rl.student.model.student_from_config); then load the state_dict."""
        config = {k: v for k, v in config.items() if k != "student"}
        known = {"critic", "critic_dim", "critic_hidden", "critic_obs", "activation", "normalize_obs",
                 "value_grad_to_trunk"}
        unknown = set(config) - known
        if unknown:
            raise ConfigError(f"StudentActorCritic config: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(student, **config)

    def config_dict(self) -> dict:
        return {"student": self.student.config_dict(), **self._config}

    # ---- the student's side -----------------------------------------------------------------------
    @property
    def is_recurrent(self) -> bool:
        """Always: every student goes through the sequence path (storage with memory, ``forward_sequence``);
        an MLP student's memory is simply None there (its own ``is_recurrent`` only tells BC not to burn in)."""
        return True

    @property
    def log_std(self) -> nn.Parameter:
        """The student head's log-std (A,): the runner logs its spread."""
        return self.student.head.log_std

    def initial_memory(self, n: int, device=None):
        return self.student.initial_memory(n, device)

    def reset_memory(self, memory, done):
        return self.student.reset_memory(memory, done)

    def act(self, obs: dict, memory=None):
        return self.student.act(obs, memory)

    def act_inference(self, obs: dict, memory=None):
        return self.student.act_inference(obs, memory)

    def act_value(self, obs: dict, memory=None):
        """One step with its value: (Normal over (N, A), memory, values (N,)). Shared: one trunk pass, the
        action and the value from the same features; privileged: the critic on the privileged obs."""
        if self.critic_kind == "privileged":
            dist, memory = self.student.act(obs, memory)
            return dist, memory, self.value(obs)
        features, memory = self.student.step_features(obs, memory)  # (N, F)
        return self.student.head(features, self.student.norm), memory, self._shared_value(features)

    # ---- the critic ---------------------------------------------------------------------------------
    def set_update_actor(self, update_actor: bool) -> None:
        """PPO.update's phase: while the actor is frozen (critic warm-up) no value gradient reaches the trunk."""
        self._update_actor = bool(update_actor)

    def _shared_value(self, features: torch.Tensor) -> torch.Tensor:
        """The value head on trunk features (..., F) -> (...,); detached unless the trunk may learn from it."""
        if not (self.value_grad_to_trunk and self._update_actor):
            features = features.detach()
        return self.critic_head(features).squeeze(-1)

    def value(self, obs: dict, memory=None) -> torch.Tensor:
        """Privileged: V of the privileged state, obs groups (..., D) -> (...,), the memory not read.
        Shared: V after one student step from ``memory`` on obs groups (N, D) -> (N,); the step's new memory
        is dropped (the caller's carried memory is not advanced)."""
        if self.critic_kind == "privileged":
            return self.critic(self.critic_norm(obs[self.critic_obs])).squeeze(-1)
        features, _ = self.student.step_features(obs, memory)  # (N, F)
        return self._shared_value(features)

    def update_normalizers(self, obs: dict) -> None:
        if self.critic_kind == "privileged":
            self.critic_norm.update(obs[self.critic_obs])

    # ---- a stored rollout ---------------------------------------------------------------------------
    def evaluate(self, obs_seq: dict, memory0=None, starts: torch.Tensor | None = None
                 ) -> tuple[Normal, torch.Tensor]:
        """obs groups (B, L, D), memory0 the memory before each sequence's first step, starts (B, L) bool
        -> (Normal over (B, L, A), values (B, L)): the rollout's distributions (and shared values) again
        while the weights are unchanged (the student resets its memory at the starts as the rollout did)."""
        if self.critic_kind == "privileged":
            dist, _ = self.student.forward_sequence(obs_seq, starts, memory0)
            return dist, self.value(obs_seq)
        features, _ = self.student.sequence_features(obs_seq, starts, memory0)  # (B, L, F)
        return self.student.head(features, self.student.norm), self._shared_value(features)

    def train(self, mode: bool = True) -> StudentActorCritic:
        """The student always acts as deployed (eval mode): its previous-action dropout or noise (the
        copycat remedies) samples only in train mode, so a rollout and the update recomputing it would
        draw different noise and the first ratio would not be 1. PPO trains the deployed behaviour."""
        super().train(mode)
        self.student.eval()
        return self

    def burn_in(self, obs_seq: dict, starts: torch.Tensor, steps: int):
        """``rl.student.head.burn_in`` of the student: the window after its first ``steps`` steps and the
        memory they built without gradient, for ``evaluate_actor`` (PPO's imitation term)."""
        return burn_in(self.student, obs_seq, starts, steps)

    def evaluate_actor(self, obs_seq: dict, memory0=None, starts: torch.Tensor | None = None) -> Normal:
        """The student alone over sequences (Normal over (B, L, A)): PPO's imitation term on demonstrated
        windows, which hold the student's obs group but not the critic's privileged one."""
        dist, _ = self.student.forward_sequence(obs_seq, starts, memory0)
        return dist
