"""The store's few contacts with zarr and the file system: codecs, checked reads, appends, repair helpers.

Only public zarr calls. The store used to gather all appends of a fold in one trip through zarr's
event loop (``Array._async_array`` and ``zarr.core.sync``, private), because 52 sequential appends
cost 240 ms per *episode* when every episode was appended on its own. Folds now batch up to 512
episodes in a background thread, and one fold of 512 Lift-sized episodes (13.8k steps, 52 arrays)
cost 368 ms with sequential public appends against 293 ms gathered (median of 6, this machine):
0.15 ms an episode off the collecting thread, not worth a private API.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import numpy as np
import zarr

from envs.base import ConfigError


def codecs() -> tuple:
    """zstd level 1, then a CRC-32C of the compressed chunk. zstd 1: on a Lift store, 2.5x less CPU than
    level 3 for 6% more bytes (ratio 2.78 vs 2.95; lz4 2.29). The checksum: blosc reads a chunk with a
    flipped byte without complaint and returns wrong values (tests/test_store_integrity.py)."""
    return (zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"), zarr.codecs.Crc32cCodec())


def corrupt_error(path: Path, name: str, exc: Exception) -> ConfigError:
    return ConfigError(f"{path}: array {name} has a corrupt or truncated chunk ({type(exc).__name__}: "
                       f"{str(exc)[:80]}); restore the store from a copy or re-collect it")


def read(path: Path, name: str, arr: zarr.Array, selection=slice(None)) -> np.ndarray:
    """``arr[selection]``; a chunk that fails its checksum or does not decompress -> one ConfigError.
    (zarr reports both as ValueError / RuntimeError from its codec pipeline.)"""
    try:
        return arr[selection]
    except (ValueError, RuntimeError, OSError) as exc:
        raise corrupt_error(path, name, exc) from exc


def append_all(pending: list[tuple[zarr.Array, np.ndarray]]) -> None:
    """Append each values block to its array along axis 0 (sequential public calls: see the module doc)."""
    for arr, values in pending:
        arr.append(values, axis=0)


def written_prefix(ends: np.ndarray) -> int:
    """How many entries of ``episode_ends`` were really written. zarr's append writes the new shape
    before the new values, so a kill in between leaves a longer array whose tail reads as the fill
    value 0, and repair took that tail at face value: it cut every data array to 0 steps. (The SIGKILL
    test failed once in a fresh clone with the first stored action wrong; it kills as soon as a
    reader sees the shape grow, which can land in that window; a constructed case reproduces it.)
    Real ends rise strictly from > 0, so the written entries are the rising prefix."""
    rising = np.diff(np.concatenate([[0], ends])) > 0
    return len(ends) if rising.all() else int(np.argmin(rising))


def remove_partial_files(node_dir: Path, arr: zarr.Array | None, keep_rows: int) -> None:
    """Delete the ``*.<uuid>.partial`` files a killed zarr write left in one node. zarr's local store
    writes each file beside its target and renames it, so they lie beside a node's ``zarr.json`` or
    beside the chunks a fold was writing: those from the chunk row holding row ``keep_rows`` on.
    Looking only there keeps a resume from walking every chunk file of a large store."""
    places = [node_dir]
    if arr is not None and arr.shape:
        rows = arr.chunks[0]
        first, last = keep_rows // rows, -(-max(arr.shape[0], keep_rows) // rows)
        chunk_dir = node_dir / "c"
        places += [chunk_dir] if arr.ndim == 1 else [chunk_dir / str(i) for i in range(first, last + 1)]
    for k, place in enumerate(places):
        for partial in (place.glob if k == 0 else place.rglob)("*.partial"):  # not rglob in the node: all its chunks
            partial.unlink()


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS after a fold (glibc only; elsewhere a no-op). Each fold
    allocates tens of MB in the arenas of zarr's threads, and glibc kept them: RSS rose from 331 MiB
    at 1000 Lift episodes to 384 at 5000 while Python's own objects stayed at ~4 MiB."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
