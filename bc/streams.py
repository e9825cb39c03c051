"""``bc.memory_start=carry``: the episodes laid end to end in streams, cut into chunks (truncated BPTT).

Why: with ``burn_in`` every window re-computes its starting memory under no_grad and is padded to a
fixed length; on PickLoose-v1 data the burn-in took ~35% of a training step and padding ~37% of the
computed steps (bench/bc_throughput.py). Here no step is computed twice: the module carries each
stream's memory from one chunk to the next (detached: gradients flow only inside a chunk).

Each epoch the episodes, permuted by (seed, epoch) as ``EpochSampler`` permutes windows (validation:
in their fixed order), are dealt one by one to the currently shortest of n streams (ties: the lowest
stream), and each stream is its episodes end to end. Batch c is steps [c*window, (c+1)*window) of
every stream. With DDP over W processes of b streams the layout has W*b streams and rank r takes
streams r, r+W, ...: the global batch is one process's batch of W*b streams. Per step of a chunk:

* ``starts`` = ``reset``: an episode's first step (the memory restarts there; elsewhere it comes
  from the previous chunk);
* ``valid``: a real step (not the padding after a stream's end; with ``perturbed_steps=mask`` not a
  step an injected failure acted on);
* ``prev_action``: the raw action of the step before within the episode (zeros at its start), also
  across a chunk boundary.

``bc.memory_start=episodes`` (``pack=True``): no episode is cut. Each epoch's episodes, in the same
permuted order, are packed whole into rows of ``window`` steps (best fit: each into the row with the
least room that holds it, else a new row), and a batch is ``streams`` rows. Every row begins at an
episode's start, so the memory restarts there and the gradient reaches over whole episodes. Why:
the memory learns to keep a fact only as long as the gradient reaches (a bit needed 112 steps after
it was shown: learnt over whole episodes, at chance over 32-step chunks;
bench/results/bc_spm_scripted/long_memory_bit.py), and StackPickMulti needs the welded cube 70-200
steps after its reveal. ``window`` must hold the longest episode.
"""

from __future__ import annotations

import bisect
import heapq

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def process_share() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def deal(lengths: np.ndarray, order: np.ndarray, n_streams: int) -> list[list[int]]:
    """The episodes ``order`` (indices into ``lengths``), each to the currently shortest stream, in
    that order: stream lengths differ by at most one episode's length."""
    heap = [(0, s) for s in range(n_streams)]  # (stream length, stream)
    streams: list[list[int]] = [[] for _ in range(n_streams)]
    for e in order:
        total, s = heapq.heappop(heap)
        streams[s].append(int(e))
        heapq.heappush(heap, (total + int(lengths[e]), s))
    return streams


def pack(lengths: np.ndarray, order: np.ndarray, capacity: int) -> list[list[int]]:
    """The episodes ``order`` packed whole into rows of ``capacity`` steps, in that order: each into the
    row with the least room that still holds it (best fit), else a new row. Rows in order of creation."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (steps left, row), sorted
    for e in order:
        n = int(lengths[e])
        if n > capacity:
            raise ValueError(f"an episode of {n} steps does not fit a row of {capacity}")
        i = bisect.bisect_left(room, (n, -1))
        if i == len(room):  # no row has room: a new one
            rows.append([])
            left, r = capacity, len(rows) - 1
        else:
            left, r = room.pop(i)
        rows[r].append(int(e))
        if left - n:
            bisect.insort(room, (left - n, r))
    return rows


def chunk_count(lengths: np.ndarray, orders: list[np.ndarray], n_streams: int, window: int) -> int:
    """Chunks per epoch, the same every epoch: Lightning sizes the LR schedule from len(train_dataloader)
    once, and DDP's ranks must step together. The longest stream over the deals of ``orders`` (one per
    epoch of the run), in chunks: no chunk is padding in every stream. (The general bound, mean + the
    longest episode, left chunks of padding only: 8% of the steps at 16 streams of 900 PickLoose
    episodes, and all-padding batches.)"""
    longest = max(max(int(lengths[s].sum()) if s else 0 for s in deal(lengths, order, n_streams)) for order in orders)
    return max(-(-longest // window), 1)


class StreamDataset(Dataset):
    """The chunks of the episodes ``episodes`` (indices into ``arrays["ends"]``), ``streams`` per
    process. An item is one whole batch, keyed ``(epoch, chunk, rank, world)`` by ``ChunkSampler``
    (the sampler runs in the main process, where the rank is known): tensors (streams, window, ...)."""

    def __init__(self, arrays: dict, episodes: np.ndarray, streams: int, window: int, seed: int,
                 shuffle: bool, mask_perturbed: bool = False, epochs: int = 1, pack: bool = False):
        self.a, self.streams, self.window, self.seed, self.shuffle = arrays, streams, window, seed, shuffle
        self.pack = pack  # whole episodes packed into rows (bc.memory_start=episodes), not streams cut in chunks
        self.epochs = epochs  # the chunk count covers this many epochs' deals (a resume with more rebuilds it)
        self._n_chunks: dict[int, int] = {}
        self.mask_perturbed = mask_perturbed
        ends = arrays["ends"]
        begins = np.concatenate([[0], ends[:-1]])
        self.begins = begins[episodes].astype(np.int64)  # (E,) first step of each episode
        self.lengths = (ends[episodes] - begins[episodes]).astype(np.int64)  # (E,)
        self._key: tuple | None = None  # the cached layout's (epoch, rank, world)
        self._layout: tuple[np.ndarray, np.ndarray] | None = None

    def n_chunks(self, world: int) -> int:
        if world not in self._n_chunks:
            orders = [self.order(e) for e in range(self.epochs if self.shuffle else 1)]
            if self.pack:  # the most rows any epoch's packing needs, in batches of streams x world rows
                rows = max(len(pack(self.lengths, order, self.window)) for order in orders)
                self._n_chunks[world] = max(-(-rows // (self.streams * world)), 1)
            else:
                self._n_chunks[world] = chunk_count(self.lengths, orders, self.streams * world, self.window)
        return self._n_chunks[world]

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.lengths))
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(len(self.lengths))

    def layout(self, epoch: int, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's streams: (step, first), each (streams, n_chunks * window): the global step
        index at each stream position (-1 on the padding after the stream's end) and whether an
        episode starts there. Cached: an epoch's chunks all come from one layout."""
        key = (epoch if self.shuffle else 0, rank, world)
        if self._key != key:
            if self.pack:  # stream j: its packed rows, chunk c's at column c * window
                parts = [[(c * self.window, row) for c, row in enumerate(rows)]
                         for rows in self._packed(epoch, rank, world)]
            else:  # stream j: its episodes end to end from column 0
                parts = [[(0, eps)] for eps in deal(self.lengths, self.order(epoch), self.streams * world)[rank::world]]
            step = np.full((len(parts), self.n_chunks(world) * self.window), -1, np.int64)
            if max(at + int(self.lengths[eps].sum()) for p in parts for at, eps in p) > step.shape[1]:
                raise RuntimeError(f"epoch {epoch} is beyond the {self.epochs} epochs the chunk count was sized for")
            first = np.zeros(step.shape, bool)
            for s, p in enumerate(parts):
                for at, eps in p:
                    for e in eps:
                        step[s, at:at + self.lengths[e]] = np.arange(self.begins[e], self.begins[e] + self.lengths[e])
                        first[s, at] = True
                        at += int(self.lengths[e])
            self._key, self._layout = key, (step, first)
        return self._layout

    def _packed(self, epoch: int, rank: int, world: int) -> list[list[list[int]]]:
        """This process's streams with ``pack``, each a list of n_chunks packed rows: stream j's row for
        chunk c is the epoch's row c * streams * world + j * world + rank (rank r takes every world-th row
        of each global batch, as with the deal); rows past the epoch's last are empty (padding)."""
        rows = pack(self.lengths, self.order(epoch), self.window)
        n, width = self.n_chunks(world), self.streams * world
        if len(rows) > n * width:
            raise RuntimeError(f"epoch {epoch} is beyond the {self.epochs} epochs the chunk count was sized for")
        rows += [[] for _ in range(n * width - len(rows))]
        grid = np.arange(n * width).reshape(n, width)[:, rank::world]  # (chunks, streams): row ids
        return [[rows[grid[c, j]] for c in range(n)] for j in range(self.streams)]

    def __getitem__(self, key: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        epoch, c, rank, world = key
        step, first = self.layout(epoch, rank, world)
        cols = slice(c * self.window, (c + 1) * self.window)
        idx, starts = step[:, cols], first[:, cols]  # (b, window)
        real = idx >= 0
        has_prev = real & ~starts  # the step before is in the same episode
        obs = np.where(real[..., None], self.a["obs"][np.where(real, idx, 0)], 0.0).astype(np.float32)
        act = np.where(real[..., None], self.a["action"][np.where(real, idx, 0)], 0.0).astype(np.float32)
        prev = np.where(has_prev[..., None], self.a["action"][np.where(has_prev, idx - 1, 0)], 0.0)
        valid = real & ~self.a["perturbed"][np.where(real, idx, 0)] if self.mask_perturbed else real
        batch = {"policy": torch.from_numpy(obs), "prev_action": torch.from_numpy(prev.astype(np.float32)),
                 "action": torch.from_numpy(act), "starts": torch.from_numpy(starts.copy()),
                 "reset": torch.from_numpy(starts.copy()), "valid": torch.from_numpy(valid.copy())}
        if "aux" in self.a:  # bc.aux_hidden_weight: the privileged hidden flags at each step (0 on padding)
            aux = np.where(real[..., None], self.a["aux"][np.where(real, idx, 0)], 0.0)
            batch["aux"] = torch.from_numpy(aux.astype(np.float32))
        return batch

    def padding_share(self, epoch: int = 0, world: int = 1) -> float:
        """Share of the computed stream positions (all ranks) after a stream's end."""
        steps = [self.layout(epoch, r, world)[0] for r in range(world)]
        return float(sum((s < 0).sum() for s in steps) / sum(s.size for s in steps))


class ChunkSampler(Sampler):
    """Keys (epoch, chunk, rank, world) for chunks 0, 1, ... in order (the carried memory needs chunk c
    right after c-1). Lightning calls ``set_epoch``; ``use_distributed_sampler=False`` keeps it."""

    def __init__(self, data: StreamDataset):
        self.data, self.epoch = data, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        # A generator: the epoch is read at the first chunk, not when the DataLoader makes its iterator
        # (with batch_size=None it does so at once, and a resumed run makes it before set_epoch: measured)
        rank, world = process_share()
        epoch = self.epoch
        for c in range(self.data.n_chunks(world)):
            yield epoch, c, rank, world

    def __len__(self) -> int:
        return self.data.n_chunks(process_share()[1])
