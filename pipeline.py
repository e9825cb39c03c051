"""Entry point: ``python pipeline.py stage=teacher|collect|bc|finetune|eval|all [hydra overrides]``.

Each stage is a ``run(cfg) -> dict`` in its own package that writes only under ``run_dir`` and finds
its input there. Exit codes: 0 success, 2 bad input (one line on stderr), 1 anything else.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

# MuJoCo physics runs in our own threads; torch's spinning OpenMP threads would take the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from common.config_schema import STAGE_ORDER, check_env, check_ranges, explain, register  # noqa: E402

CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")
STAGES = {"teacher": "teacher.stage", "collect": "collect.stage", "bc": "bc.stage",
          "finetune": "finetune.stage", "eval": "evaluation.stage"}
ORDER = list(STAGE_ORDER)
register()  # the schema every yaml composes onto (configs/config.yaml's defaults name it)


def bad_input(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before any work starts; raises ConfigError. Types and unknown
    keys are Hydra's (the schema in common/config_schema.py); this adds the ranges and what spans keys."""
    from envs.base import ConfigError

    check_ranges(cfg)
    check_env(cfg.env, {"collect.perturbations": cfg.collect.perturbations,
                        "eval.perturbations": cfg.eval.perturbations,
                        "finetune.train_perturbations": cfg.finetune.train_perturbations,
                        **({"teacher.train_perturbations": cfg.teacher.train_perturbations}
                           if "train_perturbations" in cfg.teacher else {})})
    kinds = ("transformer", "mlp", "rnn")
    bad = [str(k) for k in cfg.bc.baselines if str(k) not in kinds]
    if bad:
        raise ConfigError(f"bc.baselines={list(cfg.bc.baselines)}: {bad} is not a student kind; choose from {kinds}")
    f = cfg.finetune
    if f.steps_per_env % f.seq_len:
        raise ConfigError(f"finetune.steps_per_env={f.steps_per_env} is not a multiple of finetune.seq_len="
                          f"{f.seq_len}; the rollout is stored in sequences of seq_len steps: pick a multiple")
    if cfg.collect.workers > 1 and cfg.collect.retry_share_target is not None:
        raise ConfigError("collect.retry_share_target needs collect.workers=1 (the quota is decided in episode "
                          "order, which parallel workers do not share)")


def precheck(overrides: list[str]) -> None:
    """Compose the config before Hydra's own run so a bad override is one line and exit code 2,
    and nothing is written (Hydra's run makes the run directory)."""
    from hydra import compose, initialize_config_dir

    from envs.base import ConfigError

    user = [o for o in overrides if not o.startswith(("hydra.", "--", "-"))]
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=user)
        validate(cfg)
    except ConfigError as exc:
        bad_input(str(exc))
    except Exception as exc:  # Hydra's composition errors: a wrong type, unknown key, group option, or syntax
        line = explain(exc, user)
        if line is None:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            line = f"{first}; {_choices_hint(first)}"
        bad_input(line)


def _choices_hint(message: str) -> str:
    """Name the options of the config group a failed override refers to."""
    for group in sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()):
        if f"'{group}/" in message or f"'{group}'" in message:
            options = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
            return f"{group} must be one of: {', '.join(options)}"
    return "see configs/ for the groups and keys, and the README for the command line"


def set_threads(threads: int) -> None:
    """torch's intra-op threads for the whole run (``threads``; 0 keeps torch's default). Small matmuls
    pay more in thread hand-offs than a second core gives back: on 2 cores, 1 thread trained BC 1.8x
    and PPO 1.3x faster than 2."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def run_stage(name: str, cfg: DictConfig) -> dict:
    module = importlib.import_module(STAGES[name])
    return module.run(cfg)


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from common.metrics import dumps_json
    from common.rundir import NotYetAvailable, run_dir
    from envs.base import ConfigError
    from rl.ppo import NonFiniteError

    out = run_dir(cfg)
    set_threads(int(cfg.threads))
    stages = ORDER if cfg.stage == "all" else [cfg.stage]
    summary: dict[str, dict | str] = {}
    print(f"run directory: {out}")
    start = time.perf_counter()
    for name in stages:
        try:
            t0 = time.perf_counter()
            summary[name] = run_stage(name, cfg)
            # every stage's wall time, so a slow `make pipeline` says where its minutes went
            summary[name]["wall_seconds"] = time.perf_counter() - t0
            print(f"[{name}] done in {summary[name]['wall_seconds'] / 60:.1f} min"
                  + (f" ({(time.perf_counter() - start) / 60:.1f} min so far)" if len(stages) > 1 else ""))
            # The resolved config of what the run directory now holds, saved once a stage has written
            # its output: a stage refused for bad input (exit 2) leaves an earlier run's config as it was.
            OmegaConf.save(cfg, out / "config.yaml", resolve=True)
        except ConfigError as exc:
            bad_input(str(exc))
        except NonFiniteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except NotYetAvailable as exc:
            if cfg.stage != "all":
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(1)
            summary[name] = f"to come: {exc}"
            print(f"[{name}] {exc}")
    # merged into what earlier runs of this run directory recorded: a single stage run afterwards (stage=eval
    # of a finished stage=all) replaces its own entry and keeps the others'
    path = out / "pipeline_summary.json"
    try:
        previous = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:  # a summary cut short by a kill: a record of earlier runs, not an input; start it afresh
        print(f"[pipeline] {path} was unreadable; writing this run's summary alone")
        previous = {}
    path.write_text(dumps_json({**(previous if isinstance(previous, dict) else {}), **summary}))


if __name__ == "__main__":
    precheck(sys.argv[1:])
    main()
