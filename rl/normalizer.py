"""Running mean / variance of observations (the empirical normaliser), saved with the policy."""

from __future__ import annotations

import torch
from torch import nn


class EmpiricalNormalizer(nn.Module):
    def __init__(self, dim: int, enabled: bool = True, eps: float = 1e-2):
        super().__init__()
        self.enabled, self.eps = enabled, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))  # saved: a resumed run stays frozen

    def freeze(self) -> None:
        """Stop updating: the statistics now define the input space of a network trained on them."""
        self.frozen.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before the flag existed: not frozen
        state_dict.setdefault(prefix + "frozen", torch.zeros((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge a batch (B, dim) into the running statistics (Chan et al.'s parallel update)."""
        if not self.enabled or bool(self.frozen):
            return
        x = x.reshape(-1, x.shape[-1]).to(self.mean.dtype)
        n = x.shape[0]
        batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total).to(self.mean.dtype)
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * (self.count * n / total)
        self.var.copy_((m2 / total).to(self.var.dtype))
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return (x - self.mean) / torch.sqrt(self.var + self.eps)
