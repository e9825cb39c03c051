"""Opt-in measurements of a student's internals during one sequence pass (no Lightning, no cost when off).

A ``Probe`` is attached by ``StudentMixin.recording()`` (rl/student/head.py) for one ``forward_sequence``;
the model's layers feed it only when it is attached (one ``is not None`` test per layer otherwise).
What it measures, each averaged over the valid query tokens of the whole window:

* ``resid_attn/<layer>``, ``resid_mlp/<layer>``: ||branch output|| / ||stream input|| per token, the
  residual ratio of a pre-norm layer's attention and MLP branches (0 under safe init: the branches'
  output projections start at zero; growing as the branches learn).
* ``attn_entropy/<layer>/head<h>``: -sum_c p_c log p_c of the head's attention weights over its keys
  (log n for uniform attention over n keys; 0 for attention on one key).

``<layer>`` is ``layer<i>``, or ``pass<p>/layer<i>`` with P > 1 recurrent passes (weights shared, the
statistics not). Only the step tokens are measured, not the memory's own read and write passes.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def attention_weights(q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """What ``F.scaled_dot_product_attention`` computes inside: q (B, H, N, Dh), keys (B, H, C, Dh),
    mask (B|1, 1, N, C) bool (True: attend) -> weights (B, H, N, C), rows summing to 1."""
    logits = q @ keys.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, H, N, C), SDPA's default scale
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(-1)


def memory_norm_stats(vectors: torch.Tensor) -> dict[str, float]:
    """vectors (..., D) of the carried memory (transformer tokens, LSTM hidden states) -> the mean and
    the max of their L2 norms: a bounded memory keeps both flat however long the episode."""
    norms = torch.linalg.vector_norm(vectors.float(), dim=-1).reshape(-1)
    return {"memory_norm": float(norms.mean()), "memory_norm_max": float(norms.max())}


class Probe:
    def __init__(self, step_valid: torch.Tensor | None = None):
        """step_valid (B, T) bool: the window steps to measure (the loss's; None: all real steps)."""
        self.step_valid = step_valid
        self.tokens_valid: torch.Tensor | None = None  # (B, N) of the chunk being run, set by the model
        self._sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self._counts: dict[str, torch.Tensor | float] = defaultdict(float)

    def begin_chunk(self, length: torch.Tensor, L: int, S: int, t_idx: torch.Tensor | None) -> None:
        """A chunk of L steps of S tokens: row b's first length[b] steps are real; t_idx (B, L) their
        times in the window (None in step mode: no step mask)."""
        steps = torch.arange(L, device=length.device)[None] < length[:, None]  # (B, L)
        if self.step_valid is not None and t_idx is not None:
            steps = steps & self.step_valid.to(steps.device).gather(1, t_idx)
        self.tokens_valid = steps.repeat_interleave(S, 1)  # (B, L*S)

    def layer(self, name: str) -> LayerProbe:
        return LayerProbe(self, name)

    def add(self, key: str, values: torch.Tensor) -> None:
        """values (n, ...) one row per measured token: sums per trailing index (one key each if any)."""
        if values.dim() == 1:
            self._sums[key] = self._sums[key] + values.sum()
            self._counts[key] = self._counts[key] + values.shape[0]
        else:
            for h in range(values.shape[1]):
                self.add(f"{key}{h}", values[:, h])

    def summary(self) -> dict[str, float]:
        return {k: float(self._sums[k]) / self._counts[k] for k in sorted(self._sums) if self._counts[k]}


class LayerProbe:
    """The probe as seen by one (pass, layer) of the step tokens' stack."""

    def __init__(self, probe: Probe, name: str):
        self.probe, self.name = probe, name

    def residual(self, branch: str, out: torch.Tensor, stream: torch.Tensor) -> None:
        """out, stream (B, N, D): the branch's output and the stream it is added to."""
        ratio = torch.linalg.vector_norm(out, dim=-1) / torch.linalg.vector_norm(stream, dim=-1).clamp_min(
            torch.finfo(stream.dtype).tiny)  # (B, N)
        self.probe.add(f"resid_{branch}/{self.name}", ratio[self.probe.tokens_valid].detach())

    def attention(self, weights: torch.Tensor) -> None:
        """weights (B, H, N, C) of the step tokens' queries."""
        entropy = torch.special.entr(weights).sum(-1)  # (B, H, N); entr(0) = 0 on the masked keys
        self.probe.add(f"attn_entropy/{self.name}/head", entropy.transpose(1, 2)[self.probe.tokens_valid].detach())
