"""A behaviour-cloned student as PPO's actor, with an asymmetric (privileged) critic beside it.

The actor is the student itself (``self.student``: its parameters are ``student.*``, none starts with
``critic``, so PPO clips them as the actor's). The critic is a separate MLP on the ``privileged`` group
with its own empirical normaliser (DESIGN.md's ``finetune.critic=privileged``): it sees the full state
the student does not, and only trains the student through the advantages.

The policy interface of rl/networks.py, with sequences batch-first as the recurrent storage yields them:
  ``act(obs, memory)``                           the student's one step
  ``value(obs, memory=None) -> (...,)``          the critic on any leading dims ((N,) or (B, L))
  ``evaluate(obs_seq, memory0, starts)``         (Normal over (B, L, A), values (B, L)) via the
                                                 student's ``forward_sequence`` from the stored memory
  ``evaluate_actor(obs_seq, memory0, starts)``   the Normal alone (demonstrated windows, no critic)
  ``update_normalizers(obs)``                    the critic's only: the student's input normaliser
                                                 stays as BC fitted it (the actor's input space)
The std is the student head's free log-std parameter: never clamped here either.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal

from rl.networks import mlp
from rl.normalizer import EmpiricalNormalizer


class StudentActorCritic(nn.Module):
    def __init__(self, student: nn.Module, critic_dim: int, critic_hidden: list[int] | None = None,
                 critic_obs: str = "privileged", activation: str = "elu", normalize_obs: bool = True):
        super().__init__()
        hidden = list(critic_hidden) if critic_hidden is not None else [256, 128, 64]
        self.student = student
        self.critic_obs = critic_obs
        self._config = {"critic_dim": critic_dim, "critic_hidden": hidden, "critic_obs": critic_obs,
                        "activation": activation, "normalize_obs": normalize_obs}
        self.critic = mlp([critic_dim, *hidden, 1], activation)
        self.critic_norm = EmpiricalNormalizer(critic_dim, enabled=normalize_obs)

    # ---- the student's side -----------------------------------------------------------------------
    @property
    def is_recurrent(self) -> bool:
        return bool(getattr(self.student, "is_recurrent", False))

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

    # ---- the critic ---------------------------------------------------------------------------------
    def value(self, obs: dict, memory=None) -> torch.Tensor:
        """V of the privileged state: obs groups (..., D) -> (...,). The memory is not read."""
        return self.critic(self.critic_norm(obs[self.critic_obs])).squeeze(-1)

    def update_normalizers(self, obs: dict) -> None:
        self.critic_norm.update(obs[self.critic_obs])

    # ---- a stored rollout ---------------------------------------------------------------------------
    def evaluate(self, obs_seq: dict, memory0=None, starts: torch.Tensor | None = None
                 ) -> tuple[Normal, torch.Tensor]:
        """obs groups (B, L, D), memory0 the memory before each sequence's first step, starts (B, L) bool
        -> (Normal over (B, L, A), values (B, L)): the rollout's distributions again while the weights
        are unchanged (the student resets its memory at the starts as the rollout did)."""
        return self.evaluate_actor(obs_seq, memory0, starts), self.value(obs_seq)

    def evaluate_actor(self, obs_seq: dict, memory0=None, starts: torch.Tensor | None = None) -> Normal:
        """The student alone over sequences (Normal over (B, L, A)): PPO's imitation term on demonstrated
        windows, which hold the student's obs group but not the critic's privileged one."""
        dist, _ = self.student.forward_sequence(obs_seq, starts, memory0)
        return dist

    def config_dict(self) -> dict:
        return {"student": self.student.config_dict(), **self._config}
