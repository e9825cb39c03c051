"""Baseline students with the transformer's head, normaliser and interface.

MLPStudent: the current step only (what no history gives).
LSTMStudent: robomimic's BC-RNN: an MLP encoder per step, a multi-layer LSTM, the MLP head; the
sequence mode is full backpropagation through the window, the step mode carries (h, c).
Both read the flat policy vector (no tokens), with the same pooled per-type input normalisation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import nn

from envs.base import ConfigError, ObsSpec
from rl.networks import mlp
from rl.student.head import GaussianHead, StudentMixin
from rl.student.tokens import Normalizer, prev_action_input


@dataclass
class StudentConfig:
    group: str = "policy"
    action_dim: int = 5
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # the encoder MLP (the MLP student's trunk)
    rnn_hidden: int = 256  # rnn only
    rnn_layers: int = 2  # rnn only
    head_hidden: list[int] = field(default_factory=lambda: [128, 128])
    init_std: float | list[float] = 1.0
    prev_action: str = "off"  # off | on | dropout | noise
    prev_action_p: float = 0.5


@dataclass
class RNNMemory:
    h: torch.Tensor  # (layers, N, H)
    c: torch.Tensor  # (layers, N, H)

    def detach(self) -> RNNMemory:
        return RNNMemory(self.h.detach(), self.c.detach())


class _FlatStudent(StudentMixin, nn.Module):
    def __init__(self, spec: ObsSpec, cfg: StudentConfig):
        super().__init__()
        if not cfg.hidden:
            raise ConfigError("bc.model: hidden must list at least one layer width")
        self.spec, self.cfg = spec, cfg
        self.norm = Normalizer(spec, cfg.group, cfg.action_dim)
        in_dim = spec.dim(cfg.group) + (cfg.action_dim if cfg.prev_action != "off" else 0)
        self.encoder = nn.Sequential(mlp([in_dim, *cfg.hidden], "gelu"), nn.GELU())

    def _features(self, obs: dict) -> torch.Tensor:
        """obs groups (..., D) -> encoder features (..., hidden[-1])."""
        x = self.norm.obs(obs[self.cfg.group])
        if self.cfg.prev_action != "off":
            prev = prev_action_input(self.norm.action_in(obs["prev_action"]), self.cfg.prev_action,
                                     self.cfg.prev_action_p, self.training)
            x = torch.cat([x, prev], -1)
        return self.encoder(x)


class MLPStudent(_FlatStudent):
    kind = "mlp"
    is_recurrent = False

    def __init__(self, spec: ObsSpec, cfg: StudentConfig):
        super().__init__(spec, cfg)
        self.head = GaussianHead(cfg.hidden[-1], cfg.head_hidden, cfg.action_dim, cfg.init_std)

    def initial_memory(self, n: int, device=None):
        return None

    def reset_memory(self, memory, done):
        return memory

    def act(self, obs: dict, memory=None):
        return self.head(self._features(obs), self.norm), memory

    def step_features(self, obs: dict, memory=None):
        """``act`` without the head: (the head's input (N, F), memory)."""
        return self._features(obs), memory

    def forward_sequence(self, obs_seq: dict, starts=None, memory0=None):
        return self.head(self._features(obs_seq), self.norm), None

    def sequence_features(self, obs_seq: dict, starts=None, memory0=None):
        """``forward_sequence`` without the head: (the head's input (B, T, F), None)."""
        return self._features(obs_seq), None

    def forward(self, obs_seq: dict, starts=None, memory0=None):
        return self.forward_sequence(obs_seq, starts, memory0)


class LSTMStudent(_FlatStudent):
    kind = "rnn"

    def __init__(self, spec: ObsSpec, cfg: StudentConfig):
        super().__init__(spec, cfg)
        self.rnn = nn.LSTM(cfg.hidden[-1], cfg.rnn_hidden, cfg.rnn_layers, batch_first=True)
        self.head = GaussianHead(cfg.rnn_hidden, cfg.head_hidden, cfg.action_dim, cfg.init_std)

    def initial_memory(self, n: int, device=None) -> RNNMemory:
        device = device or self.head.log_std.device
        z = torch.zeros(self.cfg.rnn_layers, n, self.cfg.rnn_hidden, device=device)
        return RNNMemory(z, z.clone())

    def reset_memory(self, memory: RNNMemory, done: torch.Tensor) -> RNNMemory:
        keep = (~done.to(memory.h.device)).to(memory.h.dtype)[None, :, None]  # (1, N, 1)
        return RNNMemory(memory.h * keep, memory.c * keep)

    def act(self, obs: dict, memory: RNNMemory | None = None):
        features, memory = self.step_features(obs, memory)
        return self.head(features, self.norm), memory

    def step_features(self, obs: dict, memory: RNNMemory | None = None):
        """``act`` without the head: (the LSTM's output (N, H), memory)."""
        feat = self._features(obs)  # (N, F)
        memory = memory if memory is not None else self.initial_memory(feat.shape[0], feat.device)
        y, (h, c) = self.rnn(feat[:, None], (memory.h, memory.c))
        return y[:, 0], RNNMemory(h, c)

    def forward_sequence(self, obs_seq: dict, starts: torch.Tensor | None = None,
                         memory0: RNNMemory | None = None):
        features, memory = self.sequence_features(obs_seq, starts, memory0)
        return self.head(features, self.norm), memory

    def sequence_features(self, obs_seq: dict, starts: torch.Tensor | None = None,
                          memory0: RNNMemory | None = None):
        """``forward_sequence`` without the head: (the LSTM's outputs (B, T, H), memory after the window).
        obs groups (B, T, D), starts (B, T) bool. One LSTM call per stretch between the times at
        which any row starts an episode (usually one call: windows begin at episode starts)."""
        feat = self._features(obs_seq)  # (B, T, F)
        B, T, _ = feat.shape
        memory = memory0 if memory0 is not None else self.initial_memory(B, feat.device)
        if starts is None:
            starts = torch.zeros(B, T, dtype=torch.bool, device=feat.device)
        cuts = [0] + [t for t in range(1, T) if bool(starts[:, t].any())] + [T]
        ys = []
        for a, b in itertools.pairwise(cuts):
            memory = self.reset_memory(memory, starts[:, a])
            y, (h, c) = self.rnn(feat[:, a:b], (memory.h, memory.c))
            memory = RNNMemory(h, c)
            ys.append(y)
        return torch.cat(ys, 1), memory

    def forward(self, obs_seq: dict, starts=None, memory0=None):
        return self.forward_sequence(obs_seq, starts, memory0)

    def memory_vectors(self, memory: RNNMemory) -> torch.Tensor:
        return memory.h  # (layers, N, H): the hidden states carried to the next step, one norm each
