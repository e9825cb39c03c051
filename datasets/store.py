"""The demonstration store: zarr v3, written episode by episode, safe to kill at any moment.

Layout (schema 1; diffusion_policy's convention of concatenated steps plus episode ends)::

    data/obs/<group>/<entity>_<term>   (T, w) float32   what each observation group saw
    data/action                        (T, A) float32   raw policy actions, before any clipping
    data/reward (T,) float32   data/attempt (T,) int16   data/success (T,) bool
    data/sim_state                     (T, S) float64   full env state before each step
    meta/episode_ends                  (E,) int64       exclusive end of each episode in data/
    meta/episode/<field>               (E,)             seed, length, n_attempts, return, round, slot, ...
    meta/rejected/<field>              (R,)             filtered episodes: reason code, seed, round, slot
    attrs: schema_version, env, env_cfg, obs_spec, teacher, teacher_sha256, code_version, seed, created_at

Commit protocol. Each finished episode is first appended to a journal (``journal/w<E>-<R>.jnl``,
checksummed .npy records, see datasets/journal.py), which costs a write call. Every ``flush_every``
(default 512) episodes or ``FOLD_MAX_STEPS`` steps, a background thread folds the window into the
zarr arrays, one append per array, then grows ``meta/episode_ends`` (the commit), then deletes the
window's journal; collection goes on meanwhile. Readers trust ``episode_ends`` only. After a kill,
``open(mode="a")`` truncates arrays beyond the last commit, removes ``*.partial`` files, and folds
the complete records of the surviving journals in: only the episode in flight is lost. (Appending every episode straight
to ~50 zarr arrays cost 170-240 ms per episode, several times the collection itself.)
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import datetime
import functools
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync as zarr_sync

from datasets.journal import JournalWriter, read_journal
from envs.base import ConfigError

SCHEMA_VERSION = 1
TIME_CHUNK = 4096
# A fold rewrites the last, partly filled chunk of ~50 arrays, so its cost is mostly fixed: folding
# 512 Lift episodes at once costs a third of four folds of 128 (measured). The step cap bounds the
# memory of a window of long episodes.
FOLD_MAX_STEPS = 8 * TIME_CHUNK
META_CHUNK = 1024
EPISODE, REJECTED = 0, 1  # journal record kinds
REJECT_REASONS = ("never_succeeded", "object_lost", "sim_unstable", "no_contact", "too_many_attempts", "mix_quota")


def _compressor():
    # zstd level 1: on a Lift store, 2.5x less CPU than level 3 for 6% more bytes (ratio 2.78 vs 2.95;
    # lz4 2.29); the fold compresses in the background on the cores collection uses.
    return zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _release_free_memory() -> None:
    """Hand the heap's free pages back to the OS after a fold (glibc only; elsewhere a no-op). Each fold
    allocates tens of MB in the arenas of zarr's threads, and glibc kept them: RSS rose from 331 MiB
    at 1000 Lift episodes to 384 at 5000 while Python's own objects stayed at ~4 MiB."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _append_concurrently(pending: list[tuple[zarr.Array, np.ndarray]]) -> None:
    """Append to many arrays in one trip through zarr's event loop: one sync append per array costs a
    round trip each (measured: 52 arrays took 240 ms per episode one by one)."""

    async def gather():
        await asyncio.gather(*(arr._async_array.append(values, axis=0) for arr, values in pending))

    zarr_sync(gather())


def _written_prefix(ends: np.ndarray) -> int:
    """How many entries of ``episode_ends`` were really written. zarr's append writes the new shape
    before the new values, so a kill in between leaves a longer array whose tail reads as the fill
    value 0, and repair took that tail at face value: it cut every data array to 0 steps. (The SIGKILL
    test failed once in a fresh clone with the first stored action wrong; it kills as soon as a
    reader sees the shape grow, which can land in that window; a constructed case reproduces it.)
    Real ends rise strictly from > 0, so the written entries are the rising prefix."""
    rising = np.diff(np.concatenate([[0], ends])) > 0
    return len(ends) if rising.all() else int(np.argmin(rising))


def obs_key(entity: str, term: str) -> str:
    return f"{entity}_{term}"


class EpisodeStore:
    """Append-only episode store; also the reader (``episode(i)``, ``array(name)``)."""

    def __init__(self, root: zarr.Group, path: Path, flush_every: int = 512):
        self.root, self.path = root, path
        self.flush_every = flush_every
        self._cache: dict[str, list[tuple[str, zarr.Array]]] = {}
        self._journal = path / "journal"
        self._journal_writer: JournalWriter | None = None
        self._window_episodes: list[tuple[dict, dict]] = []  # journaled, not yet handed to a fold
        self._window_rejected: list[dict] = []
        self._window_steps = 0
        self._handed: list[int] | None = None
        self._folder: ThreadPoolExecutor | None = None
        self._fold_future: Future | None = None

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path, attrs: dict, data_layout: dict[str, tuple[tuple, str]],
               episode_layout: dict[str, str], flush_every: int = 512) -> "EpisodeStore":
        """New store. ``data_layout``: name -> (trailing shape, dtype) of per-step arrays (names may
        contain '/'); ``episode_layout``: per-episode field -> dtype."""
        path = Path(path)
        root = zarr.open_group(str(path), mode="w-", zarr_format=3)
        for name, (tail, dtype) in data_layout.items():
            root.create_array(f"data/{name}", shape=(0, *tail), chunks=(TIME_CHUNK, *tail), dtype=dtype,
                              compressors=_compressor(), fill_value=0)
        root.create_array("meta/episode_ends", shape=(0,), chunks=(META_CHUNK,), dtype="int64", fill_value=0)
        for name, dtype in episode_layout.items():
            root.create_array(f"meta/episode/{name}", shape=(0,), chunks=(META_CHUNK,), dtype=dtype, fill_value=0)
        for name, dtype in {"reason": "int8", "seed": "uint64", "round": "int64", "slot": "int64",
                            "length": "int64", "n_attempts": "int64"}.items():
            root.create_array(f"meta/rejected/{name}", shape=(0,), chunks=(META_CHUNK,), dtype=dtype, fill_value=0)
        root.attrs.update({"schema_version": SCHEMA_VERSION, "reject_reasons": list(REJECT_REASONS),
                           "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(), **attrs})
        return cls(root, path, flush_every)

    @classmethod
    def open(cls, path, mode: str = "r", flush_every: int = 512) -> "EpisodeStore":
        """Open an existing store; ``mode="a"`` also repairs an interrupted write. Bad input -> ConfigError."""
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"dataset {path} does not exist; run stage=collect or pass the right path")
        try:
            root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+", zarr_format=3)
            version = root.attrs.get("schema_version")
            root["meta/episode_ends"]
        except Exception as exc:
            raise ConfigError(f"{path} is not a readable dataset of this project ({type(exc).__name__}: {exc}); "
                              f"re-collect it or point to another store") from exc
        if version != SCHEMA_VERSION:
            raise ConfigError(f"{path} has schema version {version}, this code reads version {SCHEMA_VERSION}; "
                              f"re-collect it or use the matching release")
        store = cls(root, path, flush_every)
        if mode != "r":
            store._repair()
            store._replay_journal()
        return store

    def _repair(self) -> None:
        """Drop whatever a killed writer left beyond the last committed episode."""
        for partial in self.path.rglob("*.partial"):  # unfinished files a killed writer left
            partial.unlink()
        ends = self.root["meta/episode_ends"]
        n_eps = _written_prefix(ends[:])
        if n_eps != ends.shape[0]:
            ends.resize((n_eps,))
        n_steps = int(ends[n_eps - 1]) if n_eps else 0
        for name, arr in self._arrays("data"):
            if arr.shape[0] != n_steps:
                arr.resize((n_steps, *arr.shape[1:]))
        for name, arr in self._arrays("meta/episode"):
            if arr.shape[0] != n_eps:
                arr.resize((n_eps,))
        rejected = self._arrays("meta/rejected")
        n_rej = min(a.shape[0] for _, a in rejected)
        for name, arr in rejected:
            if arr.shape[0] != n_rej:
                arr.resize((n_rej,))

    def _arrays(self, prefix: str) -> list[tuple[str, zarr.Array]]:
        """(name, array) under ``prefix``, listed once: a listing walks the directory tree."""
        if prefix not in self._cache:
            members = self.root[prefix].members(max_depth=None)
            self._cache[prefix] = sorted((n, m) for n, m in members if isinstance(m, zarr.Array))
        return self._cache[prefix]

    def _dtypes(self, prefix: str) -> list[tuple[str, np.dtype]]:
        """(name, dtype) under ``prefix``: zarr's ``Array.dtype`` rebuilds the dtype on every call,
        which cost a third of the store's time per short episode."""
        key = f"dtypes:{prefix}"
        if key not in self._cache:
            self._cache[key] = [(name, np.dtype(arr.dtype)) for name, arr in self._arrays(prefix)]
        return self._cache[key]

    # ------------------------------------------------------------------ write
    def append_episode(self, data: dict[str, np.ndarray], meta: dict) -> None:
        """Journal one episode now (durable); fold it into the arrays at the next fold."""
        length = len(data["action"])
        clean = {}
        for name, dtype in self._dtypes("data"):
            if len(data[name]) != length:
                raise ValueError(f"data/{name} has {len(data[name])} steps, the episode has {length}")
            clean[name] = np.asarray(data[name], dtype=dtype)
        meta = {name: np.asarray(meta[name], dtype=dtype) for name, dtype in self._dtypes("meta/episode")}
        self._writer().write(EPISODE, self._pack(clean, meta))
        self._window_episodes.append((clean, meta))
        self._window_steps += length
        if len(self._window_episodes) >= self.flush_every or self._window_steps >= FOLD_MAX_STEPS:
            self._start_fold()

    def append_rejected(self, record: dict) -> None:
        values = {name: np.asarray(REJECT_REASONS.index(record[name]) if name == "reason" else record[name],
                                   dtype=dtype) for name, dtype in self._dtypes("meta/rejected")}
        self._writer().write(REJECTED, [self._record(values, "meta/rejected")])
        self._window_rejected.append(values)

    def flush(self) -> None:
        """Fold everything journaled into the arrays and wait for the commit."""
        self._start_fold()
        self._wait_fold()

    def _writer(self) -> JournalWriter:
        """The journal of the current window, named by the indices of its first records."""
        if self._journal_writer is None:
            episodes, rejected = self._handed_over()
            self._journal_writer = JournalWriter(self._journal / f"w{episodes:09d}-{rejected:09d}.jnl")
        return self._journal_writer

    def _handed_over(self) -> list[int]:
        """Episodes and rejections committed or being folded (counted here: a fold in flight
        changes the arrays' shapes from another thread)."""
        if self._handed is None:
            self._handed = [self.committed_episodes, self.committed_rejected]
        return self._handed

    def _start_fold(self) -> None:
        """Fold the window in a background thread: collection goes on while zarr compresses and
        writes. One fold at a time, so commits stay in order."""
        if not (self._window_episodes or self._window_rejected):
            return
        self._wait_fold()
        handed = self._handed_over()
        handed[0] += len(self._window_episodes)
        handed[1] += len(self._window_rejected)
        self._journal_writer.close()
        batch = ([self._journal_writer.path], self._window_episodes, self._window_rejected)
        self._journal_writer, self._window_episodes, self._window_rejected = None, [], []
        self._window_steps = 0
        self._ends(), self._arrays("meta/rejected")  # fill the caches here, not from the fold's thread
        if self._folder is None:
            self._folder = ThreadPoolExecutor(1, thread_name_prefix="zarr-fold")
        self._fold_future = self._folder.submit(self._fold, *batch)

    def _wait_fold(self) -> None:
        if self._fold_future is not None:
            future, self._fold_future = self._fold_future, None
            future.result()  # a failed fold raises here, in the collecting thread

    def _record(self, values: dict[str, np.ndarray], prefix: str) -> np.ndarray:
        record = np.zeros((), dtype=self._dtypes(prefix))
        for name in record.dtype.names:
            record[name] = values[name]
        return record

    def _journal_layout(self) -> tuple[list[str], list[str]]:
        """Data arrays that share the float32 matrix, and the others, in a fixed order."""
        if "layout" not in self._cache:
            self._cache["layout"] = ([n for n, d in self._dtypes("data") if d == np.float32],
                                     [n for n, d in self._dtypes("data") if d != np.float32])
        return self._cache["layout"]

    def _pack(self, data: dict[str, np.ndarray], meta: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Few records: the float32 arrays share one matrix, the meta fields one record."""
        floats, others = self._journal_layout()
        T = len(data["action"])
        return ([np.concatenate([data[n].reshape(T, -1) for n in floats], axis=1)] + [data[n] for n in others]
                + [self._record(meta, "meta/episode")])

    def _unpack(self, packed: list[np.ndarray]) -> tuple[dict, dict]:
        floats, others = self._journal_layout()
        matrix, rest, record = packed[0], packed[1:-1], packed[-1]
        data, col = {}, 0
        shapes = dict(self._arrays("data"))
        for name in floats:
            tail = shapes[name].shape[1:]
            width = int(np.prod(tail, dtype=int))
            data[name] = matrix[:, col: col + width].reshape(len(matrix), *tail)
            col += width
        data.update(dict(zip(others, rest)))
        return data, {name: np.asarray(record[name]) for name in record.dtype.names}

    def _fold(self, journals: list[Path], episodes: list[tuple[dict, dict]], rejected: list[dict]) -> None:
        """One append per array, then the commit (``episode_ends``), then the journals go."""
        if episodes:
            appends = [(arr, np.concatenate([data[name] for data, _ in episodes])) for name, arr in self._arrays("data")]
            appends += [(arr, np.stack([meta[name] for _, meta in episodes])) for name, arr in self._arrays("meta/episode")]
            _append_concurrently(appends)
            ends = self._ends()
            last = int(ends[ends.shape[0] - 1]) if ends.shape[0] else 0
            lengths = np.array([len(data["action"]) for data, _ in episodes], dtype=np.int64)
            ends.append(last + np.cumsum(lengths))  # the commit, after every array above
        if rejected:
            _append_concurrently([(arr, np.stack([values[name] for values in rejected]))
                                  for name, arr in self._arrays("meta/rejected")])
        for path in journals:
            path.unlink(missing_ok=True)
        _release_free_memory()

    def _replay_journal(self) -> None:
        """Fold in what a killed writer journaled but did not commit; drop what it already committed."""
        journals = sorted(self._journal.glob("w*-*.jnl")) if self._journal.exists() else []
        if not journals:
            return
        committed = (self.committed_episodes, self.committed_rejected)
        episodes, rejected = [], []
        for path in journals:
            index = [int(part) for part in path.stem[1:].split("-")]  # first episode, first rejection
            for kind, arrays in read_journal(path):
                if index[kind] >= committed[kind]:
                    if kind == EPISODE:
                        episodes.append(self._unpack(arrays))
                    else:
                        rejected.append({n: np.asarray(arrays[0][n]) for n in arrays[0].dtype.names})
                index[kind] += 1
        self._fold(journals, episodes, rejected)

    # ------------------------------------------------------------------ read
    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends()[:]

    @property
    def committed_episodes(self) -> int:
        return self._ends().shape[0]

    @property
    def committed_rejected(self) -> int:
        return dict(self._arrays("meta/rejected"))["reason"].shape[0]

    def _ends(self) -> zarr.Array:
        """The commit array, opened once (``root[...]`` re-reads its metadata from disk each time)."""
        if "ends" not in self._cache:
            self._cache["ends"] = [("episode_ends", self.root["meta/episode_ends"])]
        return self._cache["ends"][0][1]

    @property
    def num_rejected(self) -> int:
        return self._handed_over()[1] + len(self._window_rejected)

    @property
    def num_episodes(self) -> int:
        """Episodes this store holds, journaled ones included (a reader sees committed ones only)."""
        return self._handed_over()[0] + len(self._window_episodes)

    @property
    def num_steps(self) -> int:
        ends = self.episode_ends
        return int(ends[-1]) if len(ends) else 0

    def array(self, name: str) -> zarr.Array:
        return self.root[name]

    def data_names(self) -> list[str]:
        return [name for name, _ in self._arrays("data")]

    def episode_meta(self) -> dict[str, np.ndarray]:
        return {name: arr[:] for name, arr in self._arrays("meta/episode")}

    def rejected(self) -> dict[str, np.ndarray]:
        return {name: arr[:] for name, arr in self._arrays("meta/rejected")}

    def episode(self, i: int) -> dict[str, np.ndarray]:
        ends = self.episode_ends
        start, end = (int(ends[i - 1]) if i else 0), int(ends[i])
        return {name: arr[start:end] for name, arr in self._arrays("data")}
