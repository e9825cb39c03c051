"""Metrics to ``<run_dir>/metrics.jsonl`` (always) and to wandb (``logger.mode``, offline by default)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path


def json_safe(value):
    """``value`` with every NaN as None: JSON has no NaN (a mean over no episodes, e.g. attempts to
    success with no success, is null), and Python's json writes a NaN that other readers refuse."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps_json(value) -> str:
    """Indented strict JSON of ``value`` (NaN as null; anything else unknown as its string)."""
    return json.dumps(json_safe(value), indent=2, allow_nan=False, default=str)


class MetricsLogger:
    def __init__(self, run_dir: Path, stage: str, mode: str = "offline", project: str = "retry-imitation",
                 config: dict | None = None):
        if mode not in ("offline", "online", "disabled"):
            from envs.base import ConfigError

            raise ConfigError(f"logger.mode={mode!r}; choose offline, online or disabled")
        self.stage = stage
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        if mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")  # its banner would bury the progress bars
            import wandb  # imported lazily: it is slow to import and tests run with logger.mode=disabled

            self._wandb = wandb.init(project=project, mode=mode, dir=str(run_dir), name=f"{Path(run_dir).name}-{stage}",
                                     config=config, reinit="finish_previous")
            if mode == "offline":
                print(f"[{stage}] wandb offline; upload later with: wandb sync {Path(self._wandb.dir).parent}")
            else:
                print(f"[{stage}] wandb: {self._wandb.url}")

    def log(self, metrics: dict, step: int | None = None) -> None:
        record = {"stage": self.stage, "time": time.time(), "step": step, **metrics}
        # One write() on an O_APPEND descriptor: the BC baselines' process logs into the same file at the
        # same time, and a buffered text file may split a long row into several writes that interleave.
        data = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        if self._wandb is not None:
            self._wandb.log({f"{self.stage}/{k}": v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
