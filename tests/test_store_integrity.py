"""A corrupt or truncated chunk is one clear line (exit 2) for every reader, never a traceback or a wrong read."""

import subprocess
import sys

import numpy as np
import pytest

from collect.collector import EPISODE_LAYOUT
from datasets.store import EpisodeStore
from envs.base import ConfigError
from tests.conftest import ROOT

CHUNKS = {"data/action": "data/action/c/0/0", "meta/episode_ends": "meta/episode_ends/c/0"}


def small_store(path):
    layout = {"action": ((5,), "float32"), "success": ((), "bool"), "attempt": ((), "int16")}
    store = EpisodeStore.create(path, {"env": "toy", "reject_reasons": []}, layout, EPISODE_LAYOUT, flush_every=100)
    rng = np.random.default_rng(0)
    for i in range(6):
        T = 20 + i
        success = np.zeros(T, bool)
        success[-1] = True
        store.append_episode({"action": rng.standard_normal((T, 5)).astype(np.float32), "success": success,
                              "attempt": np.zeros(T, np.int16)},
                             {name: 1 if name == "n_attempts" else 0 for name in EPISODE_LAYOUT})
    store.flush()
    return path


def damage(path, array, how):
    chunk = path / CHUNKS[array]
    blob = chunk.read_bytes()
    if how == "truncate":
        chunk.write_bytes(blob[: len(blob) // 2])
    else:  # one bit inside the compressed payload, past blosc's header
        mid = len(blob) // 2
        chunk.write_bytes(blob[:mid] + bytes([blob[mid] ^ 0x10]) + blob[mid + 1:])


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("array", ["data/action", "meta/episode_ends"])
def test_inspect_names_the_corrupt_array_in_one_line(tmp_path, array, how):
    path = small_store(tmp_path / "s.zarr")
    ok = subprocess.run([sys.executable, "-m", "datasets.inspect", str(path), "--json"], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    damage(path, array, how)
    r = subprocess.run([sys.executable, "-m", "datasets.inspect", str(path), "--json"], cwd=ROOT,
                       capture_output=True, text=True)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error:") and f"array {array} has a corrupt or truncated chunk" in lines[0]
    assert "re-collect" in lines[0]


@pytest.mark.parametrize("array", ["data/action", "meta/episode_ends"])
def test_every_reader_raises_config_error_on_a_flipped_byte(tmp_path, array):
    from datasets.hdf5 import export

    path = small_store(tmp_path / "s.zarr")
    damage(path, array, "flip")
    with pytest.raises(ConfigError, match=f"array {array} has a corrupt"):
        EpisodeStore.open(path).episode(0)  # the BC data module's read
    with pytest.raises(ConfigError, match=f"array {array} has a corrupt"):
        EpisodeStore.open(path, mode="a")  # resume
    with pytest.raises(ConfigError, match=f"array {array} has a corrupt"):
        export(path, tmp_path / "out.hdf5")
    assert not (tmp_path / "out.hdf5").exists()


def test_every_array_carries_a_checksum(tmp_path):
    store = EpisodeStore.open(small_store(tmp_path / "s.zarr"))
    names = [f"data/{n}" for n in store.data_names()] + ["meta/episode_ends"] + \
        [f"meta/episode/{n}" for n in EPISODE_LAYOUT] + [f"meta/rejected/{n}" for n in store.rejected()]
    for name in names:
        assert any(type(c).__name__ == "Crc32cCodec" for c in store.array(name).compressors), name
