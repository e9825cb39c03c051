"""Demonstrated sequences for the imitation term of a recurrent student's PPO fine-tuning (rl/ppo.py).

The MLP imitation term (DAPG) samples single (obs, action) pairs. A recurrent student acts from a
memory of the episode so far, so its demonstrated actions only mean something with the history before
them: a sample here is a window of ``burn_in + seq_len`` steps of one demonstrated episode, the same
shape behaviour cloning trained on (bc/data.py's WindowDataset with ``memory_start=burn_in``):

* the window's last ``seq_len`` steps start at a uniformly random step of a uniformly random episode
  (episode first, then step: long episodes are not favoured, as they are not when resetting to them);
* the ``burn_in`` steps before rebuild a memory from zero (R2D2); they are left-padded with zeros when
  the episode has fewer steps before, and the window is right-padded at the episode's end;
* ``starts`` marks the first real step of each row (the episode's first step, or a burn-in that starts
  mid-episode): the memory starts from zero there, so the padding before it is never remembered;
* ``valid`` marks the real steps of the last ``seq_len``: only they enter the loss (the burn-in only
  builds the memory, as in BC);
* ``prev_action`` is the raw action of the step before within the episode (zeros at its first step),
  for students that read it.

Actions are the raw stored ones (never clipped: the env clips its own copy).
"""

from __future__ import annotations

import numpy as np
import torch

from datasets.arrays import read_policy_arrays
from envs.base import ConfigError


class DemoSequences:
    def __init__(self, arrays: dict, group: str, seq_len: int, burn_in: int = 16, mask_perturbed: bool = False):
        """arrays: ``datasets.arrays.read_policy_arrays``'s dict (obs (T, D) of ``group``, action (T, A),
        ends (E,), perturbed (T,) bool); ``mask_perturbed`` leaves the steps an injected failure acted on
        out of ``valid`` (as bc.perturbed_steps=mask)."""
        if seq_len < 1 or burn_in < 0:
            raise ConfigError(f"demonstration windows need seq_len >= 1 and burn_in >= 0 (got {seq_len}, {burn_in})")
        ends = np.asarray(arrays["ends"], dtype=np.int64)
        begins = np.concatenate([[0], ends[:-1]])
        if len(ends) == 0 or (ends - begins).min() < 1:
            raise ConfigError("the demonstrations need at least one episode and no empty ones; collect some first")
        self.group, self.L, self.B = group, seq_len, burn_in
        self.obs = torch.as_tensor(np.asarray(arrays["obs"], np.float32))  # (T, D)
        self.action = torch.as_tensor(np.asarray(arrays["action"], np.float32))  # (T, A) raw
        T = int(ends[-1])
        self.begins, self.ends = torch.as_tensor(begins), torch.as_tensor(ends)  # (E,)
        first = torch.zeros(T, dtype=torch.bool)
        first[self.begins] = True  # (T,) an episode's first step
        prev = torch.cat([torch.zeros_like(self.action[:1]), self.action[:T - 1]])
        self.prev_action = torch.where(first[:, None], torch.zeros_like(prev), prev)  # (T, A)
        perturbed = arrays.get("perturbed")
        self.loss_step = torch.ones(T, dtype=torch.bool)  # (T,) a step the loss may see
        if mask_perturbed and perturbed is not None:
            self.loss_step = ~torch.as_tensor(np.asarray(perturbed, bool))

    @classmethod
    def from_store(cls, store, spec, group: str, seq_len: int, burn_in: int = 16,
                   mask_perturbed: bool = False) -> DemoSequences:
        """From an open ``EpisodeStore`` and the obs spec: the columns BC read, in the same order."""
        return cls(read_policy_arrays(store, spec, group), group, seq_len, burn_in, mask_perturbed)

    @property
    def num_episodes(self) -> int:
        return len(self.ends)

    def to(self, device) -> DemoSequences:
        """Keep the arrays on ``device`` (the policy's): windows are then gathered there."""
        for name in ("obs", "action", "prev_action", "loss_step"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        """N = batch_size windows of B + L steps; deterministic given ``generator`` (a CPU one):
        {"obs": {group: (N, B+L, D), "prev_action": (N, B+L, A)}, "actions": (N, B+L, A),
        "starts": (N, B+L) bool, "valid": (N, B+L) bool}, padding zero and never valid."""
        B, n = self.B, self.B + self.L
        episode = torch.randint(0, self.num_episodes, (batch_size,), generator=generator)  # (N,)
        begin, end = self.begins[episode], self.ends[episode]  # (N,)
        # a uniform step of each episode; the min guards float rounding at the top of [0, 1)
        offset = torch.minimum((torch.rand(batch_size, generator=generator, dtype=torch.float64)
                                * (end - begin)).long(), end - begin - 1)  # (N,)
        pos = torch.arange(n)  # (B+L,) item position
        step = (begin + offset - B)[:, None] + pos  # (N, B+L) global step at each position
        real = (step >= begin[:, None]) & (step < end[:, None])  # (N, B+L)
        row = step.clamp(0, len(self.obs) - 1).to(self.obs.device)  # padding reads any row, then zeroed
        keep = real.to(self.obs.device)[..., None]

        def gather(x: torch.Tensor) -> torch.Tensor:  # (T, C) -> (N, B+L, C), zero at the padding
            return torch.where(keep, x[row], torch.zeros((), dtype=x.dtype, device=x.device))

        first_real = B - torch.minimum(offset, torch.full_like(offset, B))  # (N,) left padding length
        starts = pos[None] == first_real[:, None]  # (N, B+L) the memory starts from zero here
        valid = real & (pos[None] >= B)
        valid = valid.to(self.obs.device) & self.loss_step[row]
        dev = self.obs.device
        return {"obs": {self.group: gather(self.obs), "prev_action": gather(self.prev_action)},
                "actions": gather(self.action), "starts": starts.to(dev), "valid": valid}
