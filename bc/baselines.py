"""``bc.baselines``: the comparison students (MLP, LSTM), trained in a second process beside ``bc.model``.

BC trains on one thread (``threads=1``: faster than two on these small nets), so on a 2-core machine
the second core is free while the history student trains; the baselines use it, one after another.
The child is a fresh interpreter (spawn): it gets the resolved config, writes its output to
``bc_baselines.log`` in the run directory, and its results (one dict per kind) to
``bc_baselines.json``. A failure in it is reported when the main student is done, naming the log.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from common.rundir import output_path, run_dir
from envs.base import ConfigError


def _child(config: dict, kinds: list[str], log_path: str, result_path: str, threads: int) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from bc.stage import train

    cfg = OmegaConf.create(config)
    results = {}
    for kind in kinds:
        print(f"[bc] baseline {kind}", flush=True)
        results[kind] = train(cfg, kind)
        Path(result_path).write_text(json.dumps(results, default=str))


class BaselineProcess:
    """Start training ``kinds`` now, in a child process; ``join()`` waits and returns their results."""

    def __init__(self, cfg, kinds: list[str]):
        out = run_dir(cfg)
        for kind in kinds:  # refuse before anything starts (as the main student does for student.pt)
            name = f"student_{kind}.pt"
            if not (bool(cfg.bc.resume) and (out / f"bc_ckpt_{kind}" / "last.ckpt").exists()):
                output_path(cfg, name)
        self.kinds = kinds
        self.log = out / "bc_baselines.log"
        self.results = out / "bc_baselines.json"
        self.results.unlink(missing_ok=True)
        config = OmegaConf.to_container(cfg, resolve=True)
        self.process = mp.get_context("spawn").Process(
            target=_child, args=(config, kinds, str(self.log), str(self.results), int(cfg.threads)), daemon=True)
        self.process.start()
        print(f"[bc] training the baselines {', '.join(kinds)} in a second process (output: {self.log})")

    def join(self) -> dict:
        self.process.join()
        if self.process.exitcode != 0:
            tail = self.log.read_text().strip().splitlines()[-1:] if self.log.exists() else []
            line = tail[0] if tail else f"exit code {self.process.exitcode}"
            if line.startswith("error:") or "ConfigError" in line:
                raise ConfigError(f"a bc baseline failed: {line} (see {self.log})")
            raise RuntimeError(f"a bc baseline failed: {line} (see {self.log})")
        results = json.loads(self.results.read_text())
        for kind, r in results.items():
            print(f"[bc] baseline {kind}: selected epoch {r['selected_epoch']} (closed-loop success "
                  f"{r['selected_success_rate']:.1%}); {r['train_seconds']:.0f} s; wrote {r['student_ckpt']}")
        return results
