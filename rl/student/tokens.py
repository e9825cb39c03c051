"""The student's input side: entity layout from the obs spec, the input normaliser, the tokenizer.

Entities come from ``ObsSpec.entities(group)`` (gripper, cube0, cube1, ..., base, task). Their *type*
is the name without its trailing index: every cube is of type ``cube``. Cubes are interchangeable (which
one is welded is random, and its index must not tell), so everything here treats entities of one type
alike: one projection and one type embedding per type, and normalisation statistics pooled over the
members of a type. Nothing tells cube0 from cube1 but its values.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from envs.base import ConfigError, ObsSpec

PREV_ACTION_MODES = ("off", "on", "dropout", "noise")


def entity_type(name: str) -> str:
    return re.sub(r"\d+$", "", name)


def entity_layout(spec: ObsSpec, group: str) -> list[tuple[str, list[int]]]:
    """(entity, its columns in the group's vector), in the spec's order."""
    if group not in spec.groups:
        raise ConfigError(f"the obs spec has no group {group!r}; it has {sorted(spec.groups)}")
    return [(e, [c for s, t in spec.entity_slices(group, e) for c in range(s, t)]) for e in spec.entities(group)]


def type_layout(spec: ObsSpec, group: str) -> dict[str, list[list[int]]]:
    """type -> columns of each of its entities, (n_entities, width). Entities of a type must have the
    same terms (the same width), or one projection could not read them all."""
    out: dict[str, list[list[int]]] = {}
    for name, cols in entity_layout(spec, group):
        members = out.setdefault(entity_type(name), [])
        if members and len(members[0]) != len(cols):
            raise ConfigError(f"obs group {group!r}: entity {name!r} has {len(cols)} columns, other "
                              f"{entity_type(name)!r} entities {len(members[0])}; give them the same terms")
        members.append(cols)
    return out


class Normalizer(nn.Module):
    """Input and action statistics as buffers (saved in the state_dict, set once from data by ``fit``).

    ``obs``: (x - mean) / std per column. ``action_in``: the same for a previous-action input.
    ``action_out``: normalised head output back to raw action units (the head learns in unit scale;
    this is a fixed affine map, no clipping).
    """

    def __init__(self, spec: ObsSpec, group: str, action_dim: int):
        super().__init__()
        self._types = type_layout(spec, group)
        dim = spec.dim(group)
        self.register_buffer("obs_mean", torch.zeros(dim))
        self.register_buffer("obs_std", torch.ones(dim))
        self.register_buffer("act_mean", torch.zeros(action_dim))
        self.register_buffer("act_std", torch.ones(action_dim))

    @torch.no_grad()
    def fit(self, obs: torch.Tensor, actions: torch.Tensor | None = None, eps: float = 1e-4) -> None:
        """obs (..., D) and actions (..., A) from the training split. Statistics of a type with several
        entities are pooled over them, so cube0 and cube1 see the same normalisation. ``eps`` is a soft
        floor on the *input* variance (a column constant in the training data stays finite)."""
        x = obs.reshape(-1, obs.shape[-1]).double()
        mean, var = x.mean(0), x.var(0, unbiased=False)
        for members in self._types.values():
            idx = torch.tensor(members)  # (n, W)
            vals = x[:, idx]  # (N, n, W)
            mean[idx] = vals.mean((0, 1)).expand(len(members), -1)
            var[idx] = vals.var((0, 1), unbiased=False).expand(len(members), -1)
        self.obs_mean.copy_(mean)
        self.obs_std.copy_((var + eps).sqrt())
        if actions is not None:
            a = actions.reshape(-1, actions.shape[-1]).double()
            self.act_mean.copy_(a.mean(0))
            self.act_std.copy_((a.var(0, unbiased=False) + eps).sqrt())

    def obs(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.obs_mean) / self.obs_std

    def action_in(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.act_mean) / self.act_std

    def action_out(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.act_std + self.act_mean


def prev_action_input(a_norm: torch.Tensor, mode: str, p: float, training: bool) -> torch.Tensor:
    """The previous action as the model may see it. The copycat trap (DESIGN.md): a clean previous
    action lets the model copy the expert's last action and score a low validation loss without using
    any memory, so in training it is dropped (zeroed, per step, with probability p) or noised (std p,
    normalised units). At evaluation the clean value goes in."""
    if mode not in PREV_ACTION_MODES:
        raise ConfigError(f"prev_action={mode!r}; choose one of {PREV_ACTION_MODES}")
    if not training or mode == "on":
        return a_norm
    if mode == "dropout":
        keep = (torch.rand(a_norm.shape[:-1] + (1,), device=a_norm.device) >= p).to(a_norm.dtype)
        return a_norm * keep
    return a_norm + p * torch.randn_like(a_norm)


class EntityTokenizer(nn.Module):
    """One token per entity: a per-type linear projection of the entity's (normalised) columns plus a
    learned per-type embedding, and optionally a previous-action token.

    Tokens come out grouped by type (in order of first appearance) rather than in the spec's order:
    the transformer has no position over entities, so the order carries nothing.
    """

    def __init__(self, spec: ObsSpec, group: str, d_model: int, action_dim: int = 0):
        super().__init__()
        types = type_layout(spec, group)
        self.type_names = list(types)
        self.proj = nn.ModuleDict({t: nn.Linear(len(m[0]), d_model) for t, m in types.items()})
        for t, members in types.items():
            self.register_buffer(f"cols_{t}", torch.tensor(members), persistent=False)  # (n, W)
        self.type_emb = nn.Parameter(0.02 * torch.randn(len(types), d_model))
        self.n_entities = sum(len(m) for m in types.values())
        self.action_proj = nn.Linear(action_dim, d_model) if action_dim else None
        self.action_emb = nn.Parameter(0.02 * torch.randn(d_model)) if action_dim else None

    @property
    def n_tokens(self) -> int:
        return self.n_entities + (self.action_proj is not None)

    def forward(self, x_norm: torch.Tensor, prev_action: torch.Tensor | None = None) -> torch.Tensor:
        """x_norm (..., D_obs), prev_action (..., A) normalised -> tokens (..., E [+1], d_model)."""
        tokens = []
        for i, t in enumerate(self.type_names):
            cols = getattr(self, f"cols_{t}")  # (n, W)
            tokens.append(self.proj[t](x_norm[..., cols]) + self.type_emb[i])  # (..., n, d)
        if self.action_proj is not None:
            tokens.append((self.action_proj(prev_action) + self.action_emb).unsqueeze(-2))  # (..., 1, d)
        return torch.cat(tokens, dim=-2)
