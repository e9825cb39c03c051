"""Opt-in measurements of a student's internals during one sequence pass (no Lightning, no cost when off).

A ``Probe`` is attached by ``StudentMixin.recording()`` (rl/student/head.py) for one ``forward_sequence``;
the model's layers feed it only when it is attached (one ``is not None`` test per layer otherwise).
What it measures, each averaged over the valid query tokens of the whole window:

* ``resid_attn/<layer>``, ``resid_mlp/<layer>``: ||branch output|| / ||stream input|| per token, the
  residual ratio of a pre-norm layer's attention and MLP branches (0 under safe init: the branches'
  output projections start at zero; growing as the branches learn).
* ``attn_entropy/<layer>/head<h>``: -sum_c p_c log p_c of the head's attention weights over its keys
  (log n for uniform attention over n keys; 0 for attention on one key).

* ``memory_update_share``: the gated memory update's mean z (m' = (1 - z) m + z h, one update per block
  of K steps), and per memory width w the half-life it implies, K log 0.5 / log(1 - mean z_w) steps:
  ``memory_half_life_median`` and ``memory_half_life_max`` (the longest-kept width). The memory can keep
  a fact about as long as that (README: a welded cube forgotten within a few blocks). Averaged over
  every update the window makes (all rows; not masked by ``step_valid``).

``<layer>`` is ``layer<i>``, or ``pass<p>/layer<i>`` with P > 1 recurrent passes (weights shared, the
statistics not). Only the step tokens are measured, not the memory's own read and write passes.
"""

from __future__ import annotations

import math
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
        self._z_by_width: torch.Tensor | float = 0.0  # (D,) sums of the memory updates' z per width
        self._z_rows, self._block = 0, 1

    def begin_chunk(self, length: torch.Tensor, L: int, S: int, t_idx: torch.Tensor | None) -> None:
        """A chunk of L steps of S tokens: row b's first length[b] steps are real; t_idx (B, L) their
        times in the window (None in step mode: no step mask)."""
        steps = torch.arange(L, device=length.device)[None] < length[:, None]  # (B, L)
        if self.step_valid is not None and t_idx is not None:
            steps = steps & self.step_valid.to(steps.device).gather(1, t_idx)
        self.tokens_valid = steps.repeat_interleave(S, 1)  # (B, L*S)

    def memory_update(self, z: torch.Tensor, block: int) -> None:
        """z (B, M, D) of one gated memory update (a block end of B rows)."""
        z = z.float().reshape(-1, z.shape[-1])  # (B*M, D)
        self._sums["memory_update_share"] = self._sums["memory_update_share"] + z.sum()
        self._counts["memory_update_share"] = self._counts["memory_update_share"] + z.numel()
        self._z_by_width = self._z_by_width + z.sum(0)
        self._z_rows += z.shape[0]
        self._block = block

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
        out = {k: float(self._sums[k]) / self._counts[k] for k in sorted(self._sums) if self._counts[k]}
        if self._z_rows:
            z = (self._z_by_width / self._z_rows).double()  # (D,) mean update share per width
            half_life = self._block * math.log(0.5) / torch.log1p(-z)  # steps; z = 1: 0, z = 0: inf
            out["memory_half_life_median"] = float(half_life.median())
            out["memory_half_life_max"] = float(half_life.max())
        return out


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


class RolloutDiagnostics:
    """The runner's ``diagnostics`` hook in fine-tuning (``finetune.diag_every``): every ``every`` iterations,
    the student's ``diagnostics`` (rl/student/head.py, no grad, eval mode as it acted) on ``num_envs`` envs'
    whole rollouts, just collected and before the update, so the weights and the stored memory match:
    the env's T steps as one window from the memory its first sequence started from, its episode starts
    as the rollout reset the memory, measured on the valid steps (a group rollout masks those after an
    env's first done). Returns the probe's keys (resid_attn/*, resid_mlp/*, attn_entropy/*) and the memory
    norm (memory_norm, memory_norm_max), or {} when not due, for a policy without a recurrent storage or an
    MLP student (no internals). The envs are fixed and evenly spread (one per group where they divide),
    and nothing is sampled, so turning it on leaves the run (and its exact resume) as it was."""

    def __init__(self, every: int, num_envs: int = 4):
        self.every, self.num_envs = int(every), int(num_envs)

    def __call__(self, iteration: int, storage, policy) -> dict[str, float]:
        """iteration: the one the metrics row will carry (1 after the first rollout)."""
        student = getattr(policy, "student", policy)
        if self.every <= 0 or iteration % self.every or not hasattr(storage, "memories") \
                or not hasattr(student, "diagnostics"):
            return {}
        return student.diagnostics(*self.windows(storage, student))

    def windows(self, storage, student) -> tuple[dict, torch.Tensor, object, torch.Tensor]:
        """The measured envs' rollouts as ``forward_sequence`` reads them: obs groups (n, T, D) (the student's
        and its previous action if it reads one), starts (n, T), memory0 (n rows), valid (n, T)."""
        from rl.recurrent_storage import index_memory

        n = min(self.num_envs, storage.N)
        envs = torch.arange(n, device=storage.starts.device) * (storage.N // n)  # (n,)
        groups = [student.cfg.group] + (["prev_action"] if "prev_action" in storage.obs else [])
        obs = {g: storage.obs[g][:, envs].transpose(0, 1).contiguous() for g in groups}
        starts = storage.starts[:, envs].T.contiguous()
        valid = storage.valid[:, envs].T.contiguous()
        return obs, starts, index_memory(storage.memories[0], envs, storage.memory_dims), valid
