"""The demonstration store: zarr v3, written episode by episode, safe to kill at any moment.

Layout (schema 2; diffusion_policy's convention of concatenated steps plus episode ends)::

    data/obs/<group>/<entity>_<term>   (T, w) float32   what each observation group saw
    data/action                        (T, A) float32   the policy's raw output (see below)
    data/perturbation/<kind>           (T,) bool        drop / push / noise: an injected failure acted at this step
    data/reward (T,) float32   data/attempt (T,) int16   data/success (T,) bool
    data/sim_state                     (T, S) float64   full env state before each step
    meta/episode_ends                  (E,) int64       exclusive end of each episode in data/ (the episode commit)
    meta/episode/<field>               (E,)             seed, length, n_attempts, return, round, slot, ...
    meta/rejected/<field>              (R,)             filtered episodes: reason code, seed, round, slot
    meta/rejected attrs: committed     the rejection commit: records beyond it are not part of the store
    attrs: schema_version, env, env_cfg, obs_spec, teacher, teacher_sha256, code_version, seed, created_at

Which action is stored: the policy's raw output, never clipped, as the teacher emitted it, before
the env adds a noise burst and clips to its bounds. BC learns what the teacher meant; the executed
action is a function of it and of the env's noise, which the student cannot see. The
``data/perturbation/*`` flags mark every step that ran under an injected failure (a drop keeps the
gripper open for ``drop_steps`` steps, a burst lasts ``noise_steps``, a push one step), so BC can
mask or weight those steps.

Commit protocol. Each finished episode is first appended to a journal (``journal/w<E>-<R>.jnl``,
checksummed .npy records, see datasets/journal.py), which costs a write call. Every ``flush_every``
(default 512) episodes or ``FOLD_MAX_STEPS`` steps, a background thread folds the window into the
zarr arrays, one append per array, then grows ``meta/episode_ends`` (the episode commit), then
appends the rejections and advances ``meta/rejected``'s ``committed`` attribute (the rejection
commit; zarr writes metadata by an atomic rename), then deletes the window's journal; collection
goes on meanwhile. Readers trust the two commits only. After a kill, ``open(mode="a")`` truncates
arrays beyond the commits, removes the ``*.partial`` files zarr leaves beside the files it was
writing, and folds the complete records of the surviving journals in: only the episode in flight
is lost. (Appending every episode straight to ~50 zarr arrays cost 170-240 ms per episode, several
times the collection itself.)

Every chunk carries a CRC-32C (zarr's ``crc32c`` codec): a flipped byte that zstd does not notice
would otherwise be a silent wrong read. Any corrupt or truncated chunk a read meets becomes one
``ConfigError`` naming the array.
"""

from __future__ import annotations

import datetime
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from datasets import zarr_io
from datasets.journal import JournalWriter, read_journal
from envs.base import ConfigError

# 2: data/perturbation/<kind>, the rejection commit (meta/rejected attrs "committed"), CRC-32C chunks
SCHEMA_VERSION = 2
TIME_CHUNK = 4096
# A fold rewrites the last, partly filled chunk of ~50 arrays, so its cost is mostly fixed: folding
# 512 Lift episodes at once costs a third of four folds of 128 (measured). The step cap bounds the
# memory of a window of long episodes.
FOLD_MAX_STEPS = 8 * TIME_CHUNK
META_CHUNK = 1024
EPISODE, REJECTED = 0, 1  # journal record kinds
REJECT_REASONS = ("never_succeeded", "object_lost", "sim_unstable", "no_contact", "too_many_attempts", "mix_quota")
REJECTED_LAYOUT = {"reason": "int8", "seed": "uint64", "round": "int64", "slot": "int64", "length": "int64",
                   "n_attempts": "int64"}


def obs_key(entity: str, term: str) -> str:
    return f"{entity}_{term}"


class EpisodeStore:
    """Append-only episode store; also the reader (``episode(i)``, ``episode_slice(i)``, ``read(name)``).

    A reader's view is the commits as they were at open (or at this process's own last commit): the
    episode ends are read once into numpy, so ``episode(i)`` costs its data reads only."""

    def __init__(self, root: zarr.Group, path: Path, flush_every: int = 512):
        self.root, self.path = root, path
        self.flush_every = flush_every
        self._cache: dict[str, list[tuple[str, zarr.Array]]] = {}
        self._index: tuple[np.ndarray, int] | None = None  # (episode ends (E,) int64, committed rejections)
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
               episode_layout: dict[str, str], flush_every: int = 512) -> EpisodeStore:
        """New store. ``data_layout``: name -> (trailing shape, dtype) of per-step arrays (names may
        contain '/'); ``episode_layout``: per-episode field -> dtype."""
        path = Path(path)
        root = zarr.open_group(str(path), mode="w-", zarr_format=3)
        for name, (tail, dtype) in data_layout.items():
            root.create_array(f"data/{name}", shape=(0, *tail), chunks=(TIME_CHUNK, *tail), dtype=dtype,
                              compressors=zarr_io.codecs(), fill_value=0)
        meta = {"episode_ends": "int64", **{f"episode/{k}": v for k, v in episode_layout.items()},
                **{f"rejected/{k}": v for k, v in REJECTED_LAYOUT.items()}}
        for name, dtype in meta.items():
            root.create_array(f"meta/{name}", shape=(0,), chunks=(META_CHUNK,), dtype=dtype,
                              compressors=zarr_io.codecs(), fill_value=0)
        root["meta/rejected"].attrs["committed"] = 0
        root.attrs.update({"schema_version": SCHEMA_VERSION, "reject_reasons": list(REJECT_REASONS),
                           "created_at": datetime.datetime.now(datetime.UTC).isoformat(), **attrs})
        return cls(root, path, flush_every)

    @classmethod
    def open(cls, path, mode: str = "r", flush_every: int = 512) -> EpisodeStore:
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
                              f"re-collect it with this code (or read it with the release that wrote it)")
        store = cls(root, path, flush_every)
        if mode != "r":
            store._repair()
            store._replay_journal()
        store._load_index()  # a corrupt episode_ends fails here, at open, for every reader
        return store

    def _repair(self) -> None:
        """Drop whatever a killed writer left beyond the two commits, and its unfinished files."""
        for group in ("", "data", "meta", "meta/episode", "meta/rejected"):  # attrs writes: zarr.json; before listing
            zarr_io.remove_partial_files(self.path / group, None, 0)
        ends = self._ends()
        n_eps = zarr_io.written_prefix(zarr_io.read(self.path, "meta/episode_ends", ends))
        n_steps = int(zarr_io.read(self.path, "meta/episode_ends", ends, n_eps - 1)) if n_eps else 0
        n_rej = self._rejected_commit()
        keep = [("data", n_steps), ("meta/episode", n_eps), ("meta/rejected", n_rej)]
        for prefix, rows in keep + [("meta/episode_ends", n_eps)]:
            arrays = self._arrays(prefix) if prefix != "meta/episode_ends" else [("", ends)]
            for name, arr in arrays:
                zarr_io.remove_partial_files(self.path / prefix / name, arr, rows)
                if arr.shape[0] != rows:
                    arr.resize((rows, *arr.shape[1:]))
                # the next fold rewrites this last chunk: a corrupt one must stop the resume here, in one line
                zarr_io.read(self.path, f"{prefix}/{name}".rstrip("/"), arr, slice(rows - rows % arr.chunks[0], rows))

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
        self._ends(), self._arrays("meta/rejected"), self._rejected_group()  # caches: not from the fold's thread
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
        """One append per array, then each commit after the arrays it covers, then the journals go."""
        ends, n_rejected = self._load_index()
        if episodes:
            appends = [(arr, np.concatenate([data[name] for data, _ in episodes]))
                       for name, arr in self._arrays("data")]
            appends += [(arr, np.stack([meta[name] for _, meta in episodes]))
                        for name, arr in self._arrays("meta/episode")]
            zarr_io.append_all(appends)
            lengths = np.array([len(data["action"]) for data, _ in episodes], dtype=np.int64)
            new_ends = (int(ends[-1]) if len(ends) else 0) + np.cumsum(lengths)
            self._ends().append(new_ends)  # the episode commit, after every array above
            ends = np.concatenate([ends, new_ends])
        if rejected:
            zarr_io.append_all([(arr, np.stack([values[name] for values in rejected]))
                                for name, arr in self._arrays("meta/rejected")])
            n_rejected += len(rejected)
            self._rejected_group().attrs["committed"] = n_rejected  # the rejection commit
        self._index = (ends, n_rejected)  # one assignment: a reader in the collecting thread sees old or new
        for path in journals:
            path.unlink(missing_ok=True)
        zarr_io.release_free_memory()

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
    def _ends(self) -> zarr.Array:
        """The episode commit array, opened once (``root[...]`` re-reads its metadata from disk each time)."""
        if "ends" not in self._cache:
            self._cache["ends"] = [("episode_ends", self.root["meta/episode_ends"])]
        return self._cache["ends"][0][1]

    def _rejected_group(self) -> zarr.Group:
        if "rejected_group" not in self._cache:
            self._cache["rejected_group"] = [("rejected", self.root["meta/rejected"])]
        return self._cache["rejected_group"][0][1]

    def _rejected_commit(self) -> int:
        return int(self._rejected_group().attrs["committed"])

    def _load_index(self) -> tuple[np.ndarray, int]:
        """(episode ends (E,) int64, committed rejections), read once: the commits a reader trusts."""
        if self._index is None:
            ends = zarr_io.read(self.path, "meta/episode_ends", self._ends())
            self._index = (ends[: zarr_io.written_prefix(ends)], self._rejected_commit())
        return self._index

    def _array(self, name: str) -> zarr.Array:
        """Array ``name`` from the listings (``root[name]`` re-reads its metadata from disk)."""
        for prefix in ("data", "meta/episode", "meta/rejected"):
            if name.startswith(prefix + "/"):
                return dict(self._arrays(prefix))[name[len(prefix) + 1:]]
        return self._ends() if name == "meta/episode_ends" else self.root[name]

    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64, exclusive end of each committed episode in data/ (a copy)."""
        return self._load_index()[0].copy()

    @property
    def committed_episodes(self) -> int:
        return len(self._load_index()[0])

    @property
    def committed_rejected(self) -> int:
        return self._load_index()[1]

    @property
    def num_rejected(self) -> int:
        return self._handed_over()[1] + len(self._window_rejected)

    @property
    def num_episodes(self) -> int:
        """Episodes this store holds, journaled ones included (a reader sees committed ones only)."""
        return self._handed_over()[0] + len(self._window_episodes)

    @property
    def num_steps(self) -> int:
        ends = self._load_index()[0]
        return int(ends[-1]) if len(ends) else 0

    def array(self, name: str) -> zarr.Array:
        """The raw zarr array (for its shape, chunks and codecs); read values with ``read``."""
        return self.root[name]

    def read(self, name: str) -> np.ndarray:
        """The committed rows of array ``name`` (e.g. ``"data/action"``); a corrupt chunk -> ConfigError."""
        rows = self.num_steps if name.startswith("data/") else \
            self.committed_rejected if name.startswith("meta/rejected/") else self.committed_episodes
        return zarr_io.read(self.path, name, self._array(name), slice(0, rows))

    def data_names(self) -> list[str]:
        return [name for name, _ in self._arrays("data")]

    def episode_meta(self) -> dict[str, np.ndarray]:
        return {name: self.read(f"meta/episode/{name}") for name, _ in self._arrays("meta/episode")}

    def rejected(self) -> dict[str, np.ndarray]:
        return {name: self.read(f"meta/rejected/{name}") for name, _ in self._arrays("meta/rejected")}

    def episode_slice(self, i: int) -> slice:
        """Episode ``i``'s steps in data/, from the ends read at open: no read of its own."""
        ends = self._load_index()[0]
        if not -len(ends) <= i < len(ends):
            raise IndexError(f"episode {i} does not exist; the store has {len(ends)}")
        i %= len(ends)
        return slice(int(ends[i - 1]) if i else 0, int(ends[i]))

    def episode(self, i: int) -> dict[str, np.ndarray]:
        steps = self.episode_slice(i)
        return {name: zarr_io.read(self.path, f"data/{name}", arr, steps) for name, arr in self._arrays("data")}
