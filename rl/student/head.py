"""What every student shares: the Gaussian action head, the BC loss, and the interface helpers.

The rules (DESIGN.md): the std is a free log-std parameter in log space, never clipped or clamped;
actions are never clipped, neither in the model nor in the loss. The loss is the Gaussian negative
log-likelihood of the dataset's raw actions, optionally plus an MSE term on the mean.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.distributions import Normal

from rl.networks import mlp
from rl.student.diagnostics import Probe, memory_norm_stats
from rl.student.tokens import Normalizer


class GaussianHead(nn.Module):
    """feature (..., F) -> Normal over raw actions (..., A).

    The MLP predicts the mean in normalised action units (the normaliser maps it back, an affine map);
    ``log_std`` (A,) is a free parameter in raw action units, initialised from ``init_std`` (e.g. the
    dataset's action spread: under Adam a free log-std moves only about lr per step)."""

    def __init__(self, in_dim: int, hidden: list[int], action_dim: int, init_std: float | list[float]):
        super().__init__()
        self.mlp = mlp([in_dim, *hidden, action_dim], "gelu")
        std = torch.as_tensor(init_std, dtype=torch.float32).expand(action_dim).clone()
        self.log_std = nn.Parameter(std.log())

    def forward(self, feature: torch.Tensor, norm: Normalizer) -> Normal:
        mean = norm.action_out(self.mlp(feature))  # (..., A)
        return Normal(mean, self.log_std.exp().expand_as(mean))


def bc_loss(dist: Normal, actions: torch.Tensor, valid: torch.Tensor | None = None,
            mse_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Mean over valid steps of -log p(raw action) summed over action dims (+ mse_weight * MSE of the
    mean). ``actions`` (..., A) exactly as stored; ``valid`` (...) bool masks padding."""
    nll = -dist.log_prob(actions).sum(-1)  # (...)
    sq = (dist.mean - actions).pow(2).mean(-1)  # (...)
    if valid is None:
        valid = torch.ones_like(nll, dtype=torch.bool)
    w = valid.to(nll.dtype)
    n = w.sum().clamp_min(1.0)  # a count, not a std: an all-padding batch gives loss 0, not NaN
    nll_mean, mse_mean = (nll * w).sum() / n, (sq * w).sum() / n
    loss = nll_mean + mse_weight * mse_mean
    return loss, {"nll": nll_mean.detach(), "mse": mse_mean.detach(),
                  "std_mean": dist.stddev.detach().mean()}


def burn_in(model, obs_seq: dict, starts: torch.Tensor, steps: int, memory=None):
    """Split a window at its burn-in: the first ``steps`` steps of ``obs_seq`` (groups (B, T, D)) run
    through ``model.forward_sequence`` under no_grad from the initial memory to give the memory the
    rest starts from (R2D2). Returns (the rest's obs groups, its starts (B, T - steps), that memory
    detached); with ``steps`` 0 the window and ``memory`` unchanged. Behaviour cloning (bc.burn_in) and
    fine-tuning's imitation term both start their windows this way; any model with
    ``forward_sequence`` works (bench/bc_throughput.py's per-step loop too)."""
    if steps <= 0:
        return obs_seq, starts, memory
    with torch.no_grad():
        _, memory = model.forward_sequence({k: v[:, :steps] for k, v in obs_seq.items()}, starts[:, :steps])
    memory = memory.detach() if memory is not None else None
    return {k: v[:, steps:] for k, v in obs_seq.items()}, starts[:, steps:], memory


class StudentMixin:
    """Helpers shared by the three students (each has ``spec``, ``cfg``, ``kind``, ``norm``, ``head``).

    Each also has ``step_features`` / ``sequence_features``: ``act`` / ``forward_sequence`` without the
    head, returning the head's input (..., F) with the memory, so ``head(features, norm)`` is their output
    exactly; a critic on the trunk (rl/student_actor_critic.py, critic=shared) reads the same vector."""

    is_recurrent = True
    _probe: Probe | None = None  # set only inside ``recording()``: the layers feed it when it is there

    def config_dict(self) -> dict:
        """Everything ``student_from_config`` needs to rebuild this model (the weights go apart)."""
        from dataclasses import asdict
        group = self.cfg.group
        return {"kind": self.kind, "spec": {group: self.spec.to_dict()[group]}, "cfg": asdict(self.cfg)}

    def fit_normalizer(self, obs: torch.Tensor, actions: torch.Tensor | None = None,
                       init_std_from_actions: bool = False) -> None:
        """obs (..., D) of the policy group, actions (..., A) raw. Optionally start the log-std at the
        actions' spread (per dim), so the NLL does not spend its first epochs moving the std."""
        self.norm.fit(obs, actions)
        if init_std_from_actions and actions is not None:
            with torch.no_grad():
                self.head.log_std.copy_(self.norm.act_std.log())

    def act_inference(self, obs: dict, memory=None):
        """The deterministic action (the mean) for evaluation."""
        dist, memory = self.act(obs, memory)
        return dist.mean, memory

    @contextmanager
    def recording(self, step_valid: torch.Tensor | None = None):
        """Within it, ``forward_sequence`` feeds a ``Probe`` (rl/student/diagnostics.py) of its internals;
        outside it the model runs its normal (fused) path. step_valid (B, T): the steps to measure."""
        self._probe = Probe(step_valid)
        try:
            yield self._probe
        finally:
            self._probe = None

    def memory_vectors(self, memory) -> torch.Tensor | None:
        """The carried memory as vectors (..., D) for its norm; None: the student has none."""
        return None

    @torch.no_grad()
    def diagnostics(self, obs_seq: dict, starts: torch.Tensor | None = None, memory0=None,
                    step_valid: torch.Tensor | None = None) -> dict[str, float]:
        """One ``forward_sequence`` over a window (arguments as there) measured: what the probe records
        (the transformer's residual ratios and attention entropies) and the norm of the memory carried
        after the window (``memory_norm``, ``memory_norm_max``). The MLP student has neither: {}."""
        with self.recording(step_valid) as probe:
            _, memory = self.forward_sequence(obs_seq, starts, memory0)
        stats = probe.summary()
        vectors = self.memory_vectors(memory)
        if vectors is not None and vectors.numel():
            stats.update(memory_norm_stats(vectors))
        return stats
