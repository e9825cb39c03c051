"""Where a stage reads its input and writes its output: the run directory, unless given a path."""

from __future__ import annotations

import subprocess
from pathlib import Path

from envs.base import ConfigError


def code_version() -> str:
    """``git describe --always --dirty`` of the code running now (provenance of a dataset or checkpoint)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class NotYetAvailable(RuntimeError):
    """A stage that a later issue delivers; the pipeline reports it and goes on."""


def run_dir(cfg) -> Path:
    path = Path(str(cfg.run_dir)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_path(cfg, name: str, explicit: str | None = None) -> Path:
    """The path a stage writes to; refuses to replace an existing file unless ``overwrite=true``."""
    path = Path(explicit).expanduser().resolve() if explicit else run_dir(cfg) / name
    if path.exists() and not cfg.overwrite:
        raise ConfigError(f"{path} already exists; choose another run_dir=..., or pass overwrite=true to replace it")
    return path


def input_path(cfg, name: str, explicit: str | None, produced_by: str) -> Path:
    """The path a stage reads from; a clear error names the stage that makes it."""
    path = Path(explicit).expanduser().resolve() if explicit else run_dir(cfg) / name
    if not path.exists():
        raise ConfigError(f"{path} does not exist; run stage={produced_by} first with the same run_dir, "
                          f"or pass the path explicitly")
    return path
