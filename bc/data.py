"""The behaviour-cloning data: windows of L steps from the zarr store, split by episode.

What is read: the ``policy`` group's arrays (concatenated in the obs spec's column order), the raw
actions and the ``perturbation/*`` flags, read in place from the store (datasets/arrays.py, shared
with fine-tuning's imitation term) once per process and cached in memory (a few MB for hundreds of
episodes; the privileged group and the simulator states, most of the store, are never read).
Lightning's workers (``bc.num_workers``) fork after that read and share the pages.

The split is by episode: a seeded permutation of the episode indices, the last ``val_fraction`` of
them validation (at least one when there are two or more episodes). Normalisation statistics come
from the training episodes only.

A window: ``window`` steps of one episode starting at a multiple of ``stride`` (so it may start
mid-episode), preceded by up to ``burn_in`` steps of the same episode that the module runs under
no_grad to get the memory at the window's start. Every item has the fixed length ``burn_in +
window``: the burn-in part is left-padded when the episode has fewer steps before the window, the
window part right-padded at the episode's end. Per step:

* ``starts``: the episode's first step is here;
* ``reset``: the memory starts from zero here: ``starts``, or the first step of a burn-in that does
  not reach back to the episode's start (R2D2's burn-in from a zero state);
* ``valid``: a window step that exists (padding and, with ``perturbed_steps=mask``, steps an
  injected failure acted on are left out of the loss);
* ``prev_action``: the raw action of the step before within the episode (zeros at its start).

With ``bc.memory_start=carry`` there are no windows: the episodes are laid end to end in streams and
cut into chunks whose memory the module carries over (bc/streams.py); with ``episodes`` they are
packed whole into rows of ``window`` steps (bc/streams.py), the gradient over whole episodes.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bc.streams import ChunkSampler, StreamDataset, process_share
from datasets.arrays import concat_policy_arrays, first_episodes_of, read_hidden_flags, read_policy_arrays
from datasets.store import EpisodeStore
from envs.base import ConfigError, ObsSpec

MEMORY_STARTS = ("burn_in", "carry", "episodes")  # bc.memory_start's choices
STREAMED = ("carry", "episodes")  # the ones served by bc/streams.py: the module carries the memory chunk to chunk


def split_episodes(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) episode indices, sorted; deterministic in (n, val_fraction, seed)."""
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0xB0C])).permutation(n)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return np.sort(perm[: n - n_val]), np.sort(perm[n - n_val:])


class WindowDataset(Dataset):
    """Windows of the episodes ``episodes`` (indices into ``arrays["ends"]``)."""

    def __init__(self, arrays: dict, episodes: np.ndarray, window: int, stride: int, burn_in: int,
                 mask_perturbed: bool = False):
        self.a, self.window, self.burn_in = arrays, window, burn_in
        self.mask_perturbed = mask_perturbed
        ends = arrays["ends"]
        begins = np.concatenate([[0], ends[:-1]])
        self.index = [(int(begins[e]), int(ends[e]), s) for e in episodes
                      for s in range(0, int(ends[e] - begins[e]), stride)]  # (episode begin, end, offset)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        begin, end, s = self.index[i]
        B, W = self.burn_in, self.window
        n = B + W
        lo = begin + max(0, s - B)  # first real step of the item
        hi = min(end, begin + s + W)  # exclusive end of the window's real steps
        at = B - (begin + s - lo)  # item position of step lo
        obs = np.zeros((n, self.a["obs"].shape[1]), np.float32)
        act = np.zeros((n, self.a["action"].shape[1]), np.float32)
        prev = np.zeros_like(act)
        obs[at:at + hi - lo] = self.a["obs"][lo:hi]
        act[at:at + hi - lo] = self.a["action"][lo:hi]
        first = max(lo, begin + 1)  # prev_action: the step before, within the episode
        prev[at + first - lo:at + hi - lo] = self.a["action"][first - 1:hi - 1]
        starts = np.zeros(n, bool)
        if lo == begin:
            starts[at] = True
        reset = starts.copy()
        reset[at] = True  # a burn-in that starts mid-episode starts from zero memory
        valid = np.zeros(n, bool)
        valid[B:at + hi - lo] = True
        if self.mask_perturbed:
            valid[at:at + hi - lo] &= ~self.a["perturbed"][lo:hi]
        return {"policy": torch.from_numpy(obs), "prev_action": torch.from_numpy(prev),
                "action": torch.from_numpy(act), "starts": torch.from_numpy(starts),
                "reset": torch.from_numpy(reset), "valid": torch.from_numpy(valid)}


class EpochSampler(Sampler):
    """A permutation seeded by (seed, epoch), of which rank r takes every world-th index: with W
    processes of batch b the global batch is the same windows as one process's batch W*b (what the
    DDP test pins). Lightning calls ``set_epoch``; ``use_distributed_sampler=False`` keeps it."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch])).permutation(self.n)

    def __iter__(self):
        rank, world = process_share()
        order = self._order()
        order = order[: len(order) - len(order) % world] if world > 1 else order  # equal shares
        return iter(order[rank::world].tolist())

    def __len__(self) -> int:
        _, world = process_share()
        return self.n // world


class BCDataModule(L.LightningDataModule):
    """Reads the store at ``setup`` (each process, in place), splits by episode, makes the windows."""

    def __init__(self, path: str | list[str], spec: ObsSpec, window: int, stride: int, burn_in: int, batch_size: int,
                 val_fraction: float, seed: int, perturbed_steps: str = "keep", num_workers: int = 0,
                 num_episodes: int | None = None, memory_start: str = "burn_in", epochs: int = 1,
                 aux_hidden: bool = False):
        super().__init__()
        self.aux_hidden = aux_hidden  # batches also carry "aux": the privileged hidden flags (read_hidden_flags)
        if aux_hidden and memory_start not in STREAMED:
            raise ConfigError("bc.aux_hidden_weight > 0 needs bc.memory_start=carry or episodes")
        self.epochs = epochs  # carry: the epochs of the run (the chunk count covers their deals)
        if perturbed_steps not in ("keep", "mask"):
            raise ConfigError(f"bc.perturbed_steps={perturbed_steps!r}; choose keep or mask")
        if memory_start not in MEMORY_STARTS:
            raise ConfigError(f"bc.memory_start={memory_start!r}; choose one of {', '.join(MEMORY_STARTS)}")
        self.carry = memory_start in STREAMED  # streams of whole episodes (bc/streams.py), not windows
        self.pack = memory_start == "episodes"  # whole episodes packed into rows of window steps
        self.paths = [path] if isinstance(path, str) else list(path)  # the first: bc.dataset; then bc.extra_datasets
        self.path, self.spec = self.paths[0], spec
        self.window, self.stride, self.burn_in = window, stride, burn_in
        self.batch_size, self.val_fraction, self.seed = batch_size, val_fraction, seed
        self.mask_perturbed, self.num_workers = perturbed_steps == "mask", num_workers
        self.num_episodes = num_episodes  # the first N committed episodes (None: all)
        self.arrays: dict | None = None

    @property
    def aux_dim(self) -> int:
        """Width of the batches' "aux" targets (0: none)."""
        return int(self.arrays["aux"].shape[1]) if self.arrays is not None and "aux" in self.arrays else 0

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        stores = [EpisodeStore.open(p) for p in self.paths]
        parts = [read_policy_arrays(store, self.spec) for store in stores]
        if self.aux_hidden:
            for part, store in zip(parts, stores):
                part["aux"] = read_hidden_flags(store, self.spec)
        n = len(parts[0]["ends"])
        if n == 0:
            raise ConfigError(f"dataset {self.path} has no committed episodes; collect some first")
        if self.num_episodes is not None:
            if self.num_episodes > n:
                raise ConfigError(f"bc.num_episodes={self.num_episodes} but {self.path} has {n} committed episodes; "
                                  f"lower it or collect more")
            parts[0] = first_episodes_of(parts[0], self.num_episodes)
        self.arrays = concat_policy_arrays(parts)
        n = len(self.arrays["ends"])
        self.train_episodes, self.val_episodes = split_episodes(n, self.val_fraction, self.seed)
        if self.pack:
            ends = self.arrays["ends"]
            longest = int((ends - np.concatenate([[0], ends[:-1]])).max())
            if longest > self.window:
                raise ConfigError(f"bc.memory_start=episodes packs whole episodes into rows of bc.window="
                                  f"{self.window} steps, but {self.path} has an episode of {longest}; set "
                                  f"bc.window={longest} or more")
        if self.carry:
            self.train_set = StreamDataset(self.arrays, self.train_episodes, self.batch_size, self.window, self.seed,
                                           True, self.mask_perturbed, self.epochs, self.pack)
            self.val_set = StreamDataset(self.arrays, self.val_episodes, self._val_streams(), self.window, self.seed,
                                         False, self.mask_perturbed, pack=self.pack)
            return
        self.train_set = WindowDataset(self.arrays, self.train_episodes, self.window, self.stride, self.burn_in,
                                       self.mask_perturbed)
        self.val_set = WindowDataset(self.arrays, self.val_episodes, self.window, self.stride, self.burn_in,
                                     self.mask_perturbed)

    def _val_streams(self) -> int:
        """Validation streams per process: at most batch_size, and few enough that each holds about four
        of the longest episodes (a stream may end up to one episode before the last chunk: with the
        few validation episodes, batch_size streams would be mostly padding)."""
        ends = self.arrays["ends"]
        lengths = (ends - np.concatenate([[0], ends[:-1]]))[self.val_episodes]
        return int(np.clip(lengths.sum() // (4 * lengths.max()), 1, self.batch_size))

    def train_steps(self) -> tuple[np.ndarray, np.ndarray]:
        """(obs, actions) of every step of the training episodes: what the normaliser is fitted on."""
        self.setup()
        ends = self.arrays["ends"]
        begins = np.concatenate([[0], ends[:-1]])
        rows = np.concatenate([np.arange(begins[e], ends[e]) for e in self.train_episodes])
        return self.arrays["obs"][rows], self.arrays["action"][rows]

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        if self.carry:  # an item is a whole batch; chunks in order (workers keep the sampler's order)
            return DataLoader(data, batch_size=None, sampler=ChunkSampler(data), num_workers=self.num_workers,
                              persistent_workers=self.num_workers > 0)
        return DataLoader(data, batch_size=self.batch_size, sampler=EpochSampler(len(data), self.seed, shuffle),
                          num_workers=self.num_workers, drop_last=shuffle and len(data) >= self.batch_size,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)
