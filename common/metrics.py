"""Metrics to ``<run_dir>/metrics.jsonl`` (always) and to wandb (``logger.mode``, offline by default)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


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
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({f"{self.stage}/{k}": v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
