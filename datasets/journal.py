"""An append-only journal of records, each a few .npy arrays, safe against a kill at any moment.

A record is written with one ``write`` call: a header (magic, kind, CRC-32 and length of the
payload) followed by the payload, .npy arrays back to back (no pickle, no zip). A kill can only
tear the last record; the reader stops at the first record that is short or fails its checksum,
so what it returns is exactly the records that were complete. One open file per fold window costs a
write per episode instead of a file create, write and rename (~0.7 ms an episode on this machine).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

MAGIC = b"EPJ1"
HEADER = struct.Struct("<4sBIQ")  # magic, kind, crc32(payload), len(payload)


class JournalWriter:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "ab")

    def write(self, kind: int, arrays: list[np.ndarray]) -> None:
        buf = io.BytesIO()
        for array in arrays:
            np.save(buf, array, allow_pickle=False)
        payload = buf.getvalue()
        self._fh.write(HEADER.pack(MAGIC, kind, zlib.crc32(payload), len(payload)) + payload)
        self._fh.flush()  # into the OS page cache: a killed process loses nothing written so far

    def close(self) -> None:
        self._fh.close()


def read_journal(path: Path) -> list[tuple[int, list[np.ndarray]]]:
    """The complete records of a journal file, in order, as (kind, arrays)."""
    blob = Path(path).read_bytes()
    records, pos = [], 0
    while pos + HEADER.size <= len(blob):
        magic, kind, crc, length = HEADER.unpack_from(blob, pos)
        payload = blob[pos + HEADER.size: pos + HEADER.size + length]
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            break  # the record a kill tore; nothing after it was ever written
        buf, arrays = io.BytesIO(payload), []
        while buf.tell() < length:
            arrays.append(np.load(buf, allow_pickle=False))
        records.append((kind, arrays))
        pos += HEADER.size + length
    return records
