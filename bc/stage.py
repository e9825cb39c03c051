"""``python pipeline.py stage=bc``: behaviour cloning of a student on dataset.zarr, in Lightning.

Input: ``bc.dataset`` (default ``<run_dir>/dataset.zarr``), collected on the task ``env=`` names.
Output: ``student.pt`` (format: rl/student/checkpoint.py), Lightning's own checkpoint
``bc_ckpt/last.ckpt`` (``bc.resume=true`` continues from it exactly), ``metrics.jsonl`` and
``plots/bc_*.png``. The delivered weights are those with the best closed-loop success on held-out
seeds (bc/callbacks.py), never the lowest validation loss.

``bc.baselines`` (e.g. ``[mlp, rnn]``): students of those kinds trained beside ``bc.model`` on the same
data and settings, for the comparison table: ``student_<kind>.pt``, ``bc_ckpt_<kind>/``, metrics rows of
stage ``bc_<kind>``, ``plots/bc_<kind>_*.png``. They train one after another in a second process while
``bc.model`` trains in this one (each on one thread: the two cores both work), their output in
``bc_baselines.log``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf

from bc.callbacks import ClosedLoopSelection, MetricsWriter
from bc.data import STREAMED, BCDataModule
from bc.module import BCModule
from common.metrics import MetricsLogger
from common.rundir import code_version, input_path, output_path, run_dir
from datasets.store import EpisodeStore
from envs import env_config_dict, make_env
from envs.base import ConfigError, ObsSpec
from rl.student.checkpoint import STUDENT_KIND
from rl.student.model import build_student


def dataset_hash(store: EpisodeStore) -> str:
    """sha256 of the episode ends and the attrs: which data (and how much of it) a student saw."""
    h = hashlib.sha256(np.ascontiguousarray(store.episode_ends, np.int64).tobytes())
    h.update(json.dumps(store.attrs, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _open_dataset(cfg) -> tuple[Path, EpisodeStore]:
    path = input_path(cfg, "dataset.zarr", cfg.bc.dataset, "collect")
    store = EpisodeStore.open(path)
    if store.attrs.get("env") != cfg.env.name:
        raise ConfigError(f"{path} was collected on {store.attrs.get('env')}, not {cfg.env.name}; pass "
                          f"env=... of that task, or a dataset of {cfg.env.name} with bc.dataset=PATH")
    if store.committed_episodes < 2:
        raise ConfigError(f"{path} has {store.committed_episodes} episodes; behaviour cloning needs at least 2 "
                          f"(one to validate on): collect more")
    return path, store


def _open_extra_datasets(cfg, store: EpisodeStore) -> list[tuple[Path, EpisodeStore]]:
    """``bc.extra_datasets``: stores of the same env and policy observations as ``bc.dataset``'s."""
    extras = []
    for p in cfg.bc.extra_datasets:
        path = Path(str(p)).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"bc.extra_datasets: {path} does not exist; collect it first (e.g. stage=collect "
                              f"collect.actor=STUDENT collect.out={path})")
        extra = EpisodeStore.open(path)
        if extra.attrs.get("env") != store.attrs.get("env") or \
                extra.attrs.get("obs_spec", {}).get("policy") != store.attrs.get("obs_spec", {}).get("policy"):
            raise ConfigError(f"bc.extra_datasets: {path} was collected on {extra.attrs.get('env')} or with other "
                              f"policy observations than bc.dataset's {store.attrs.get('env')}; pass stores of one "
                              f"env config")
        extras.append((path, extra))
    return extras


def _init_from(cfg, model: torch.nn.Module, env_name: str) -> dict | None:
    """``bc.init_ckpt``: load that student's selected weights (its normaliser with them) into ``model``;
    a student of another env, kind or config: one line, exit 2. Returns what it says of itself."""
    if cfg.bc.init_ckpt is None:
        return None
    from rl.student.checkpoint import load_student

    path = Path(str(cfg.bc.init_ckpt)).expanduser().resolve()
    init, info = load_student(path, env_name=env_name, model_kind=model.kind)
    if info["model_config"] != model.config_dict():
        raise ConfigError(f"bc.init_ckpt={path} holds a {model.kind} student with another config than the "
                          f"bc.{model.kind} block; pass the block it was trained with")
    model.load_state_dict(init.state_dict())
    return {"path": str(path), "selected": info.get("selected")}


def _model_config(cfg) -> dict:
    b = cfg.bc
    kind = str(b.model)
    block = OmegaConf.to_container(b[kind], resolve=True) if kind in b else {}
    return kind, block


def build(cfg, spec: ObsSpec, action_dim: int) -> torch.nn.Module:
    kind, block = _model_config(cfg)
    return build_student(kind, spec, {**block, "action_dim": action_dim})


def burn_in_steps(cfg, model: torch.nn.Module) -> int:
    """The no_grad steps before each window: ``bc.burn_in`` for a recurrent student with
    ``bc.memory_start=burn_in``; 0 for the MLP and with carry or episodes (the memory comes from the previous
    chunk, or the row starts at an episode's start)."""
    recurrent = getattr(model, "is_recurrent", True)
    return int(cfg.bc.burn_in) if recurrent and str(cfg.bc.memory_start) not in STREAMED else 0


def data_module(cfg, path, spec: ObsSpec, burn_in: int) -> BCDataModule:
    """The data module of ``cfg.bc`` (not yet set up): what stage=bc and bench/bc_throughput.py train on.
    ``path``: the store, or a list of stores (``bc.dataset`` then ``bc.extra_datasets``)."""
    b = cfg.bc
    paths = path if isinstance(path, list) else str(path)
    return BCDataModule(paths, spec, int(b.window), int(b.window_stride), burn_in, int(b.batch_size),
                        float(b.val_fraction), int(cfg.seed), str(b.perturbed_steps), int(b.num_workers),
                        None if b.num_episodes is None else int(b.num_episodes), str(b.memory_start), int(b.epochs),
                        float(b.aux_hidden_weight) > 0)


def bc_module(cfg, model: torch.nn.Module, burn_in: int, aux_dim: int = 0) -> BCModule:
    """The LightningModule of ``cfg.bc`` around ``model``: what stage=bc and bench/bc_throughput.py train.
    ``aux_dim``: the data module's (its batches' "aux" width, with bc.aux_hidden_weight > 0)."""
    b = cfg.bc
    return BCModule(model, float(b.lr), float(b.weight_decay), int(b.warmup_steps), float(b.mse_weight), burn_in,
                    int(cfg.seed), memory_start=str(b.memory_start), log_every=int(b.log_every),
                    aux_weight=float(b.aux_hidden_weight), aux_dim=aux_dim)


def _check_resume(ckpt_path: Path, model: torch.nn.Module) -> None:
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # Lightning's own file (our run's)
    theirs = state.get("student_config")
    if theirs != model.config_dict():
        kind = theirs.get("kind") if isinstance(theirs, dict) else None
        raise ConfigError(f"{ckpt_path} holds a {kind} student with another config than bc.model={model.kind} "
                          f"and its bc.{model.kind} block; resume with the settings it was trained with, or "
                          f"set bc.resume=false with a new run_dir")


def _quiet_duplicate_logs() -> None:
    """Lightning prints its INFO lines through its own handler and again through the root logger that
    Hydra configures: every line came twice in ``make pipeline``'s output."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).propagate = False


class _Killed(RuntimeError):
    """Raised by _KillAtEpoch (tests): stands in for a kill."""


class _KillAtEpoch(L.Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise _Killed(f"interrupted at the start of epoch {self.epoch}")


def run(cfg, _stop_after_epochs: int | None = None) -> dict:
    """``bc.model`` into student.pt, and ``bc.baselines`` beside it (see the module's docstring).
    ``_stop_after_epochs`` (tests only): the run is interrupted (an exception, as a kill) at the start
    of that epoch, with only what the epoch-end checkpoints wrote, and no student.pt."""
    kinds = [str(k) for k in cfg.bc.baselines]
    if str(cfg.bc.model) in kinds or len(set(kinds)) != len(kinds):
        raise ConfigError(f"bc.baselines={kinds} repeats a kind or bc.model={cfg.bc.model}; list each other kind once")
    if not kinds or _stop_after_epochs is not None or not _is_rank_zero():  # DDP: the launcher's rank trains them
        return train(cfg, _stop_after_epochs=_stop_after_epochs)
    from bc.baselines import BaselineProcess

    side = BaselineProcess(cfg, kinds)  # refuses before anything starts if an output exists
    try:
        result = train(cfg)
    finally:
        baselines = side.join()
    return {**result, "baselines": baselines}


def train(cfg, kind: str | None = None, _stop_after_epochs: int | None = None) -> dict:
    """One student: ``bc.model`` (``kind`` None) into student.pt, or a baseline ``kind`` into
    student_<kind>.pt, with the same data and settings."""
    _quiet_duplicate_logs()
    if kind is not None:
        cfg = OmegaConf.merge(cfg, {"bc": {"model": kind, "baselines": []}})
    b = cfg.bc
    suffix = f"_{kind}" if kind is not None else ""  # the outputs of a baseline carry its kind
    # DDP's launcher re-runs the command line in each other process: a default run_dir (the time) would differ
    if not _is_rank_zero() and os.environ.get("BC_DDP_RUN_DIR"):
        cfg.run_dir = os.environ["BC_DDP_RUN_DIR"]
    out_dir = run_dir(cfg)
    if str(b.strategy).startswith("ddp"):
        os.environ["BC_DDP_RUN_DIR"] = str(out_dir)
    ckpt_dir = out_dir / f"bc_ckpt{suffix}"
    last_ckpt = ckpt_dir / "last.ckpt"
    resume = bool(b.resume) and last_ckpt.exists()
    name = f"student{suffix}.pt"
    student_path = out_dir / name if resume else output_path(cfg, name)  # resume may replace it
    if not resume and last_ckpt.exists() and not cfg.overwrite:
        raise ConfigError(f"{last_ckpt} exists; pass bc.resume=true to continue it, or overwrite=true to start over")
    data_path, store = _open_dataset(cfg)
    full_spec = ObsSpec.from_dict(store.attrs["obs_spec"])
    env_cfg = env_config_dict(cfg.env)
    probe = make_env({**env_cfg, "num_envs": 1})
    env_spec, env_name = probe.obs_spec, probe.cfg.name
    probe.close()
    if env_spec.to_dict().get("policy") != full_spec.to_dict().get("policy"):
        raise ConfigError(f"{data_path}'s policy observations differ from {env_name}'s as configured now; pass the "
                          f"env config the dataset was collected with, or re-collect it")

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    action_dim = int(store.array("data/action").shape[1])
    model = build(cfg, full_spec, action_dim)
    carry = str(b.memory_start) in STREAMED  # the memory comes from the previous chunk: no burn-in, no stride
    burn_in = burn_in_steps(cfg, model)
    if model.kind == "transformer" and not carry:  # carry: a chunk may end mid-block (the memory holds it)
        K = model.cfg.block
        if int(b.window_stride) % K or burn_in % K:
            raise ConfigError(f"bc.window_stride={b.window_stride} and bc.burn_in={burn_in} must be multiples of the "
                              f"transformer's block bc.transformer.block={K} (memory blocks count from the episode's "
                              f"start)")
    extras = _open_extra_datasets(cfg, store)
    dm = data_module(cfg, [str(data_path)] + [str(p) for p, _ in extras], full_spec, burn_in)
    dm.setup()
    obs, actions = dm.train_steps()
    model.fit_normalizer(torch.from_numpy(obs), torch.from_numpy(actions), init_std_from_actions=True)
    init = _init_from(cfg, model, env_name)  # its normaliser replaces the one just fitted: the weights expect it
    if resume:
        _check_resume(last_ckpt, model)

    module = bc_module(cfg, model, burn_in, dm.aux_dim)
    n_eval = int(b.eval_episodes)
    selection = ClosedLoopSelection(lambda: make_env({**env_cfg, "num_envs": min(n_eval, 32)}), int(b.eval_every),
                                    n_eval, int(cfg.seed))
    strategy = str(b.strategy)
    if strategy.startswith("ddp") and str(b.accelerator) == "cpu":
        from lightning.pytorch.strategies import DDPStrategy
        strategy = DDPStrategy(process_group_backend="gloo", start_method="spawn" if "spawn" in strategy else "popen")
    # save_top_k=1 (the latest epoch, no monitor) is what makes Lightning write last.ckpt at every epoch
    # end: with save_top_k=0 it wrote last.ckpt only when fit ended, so a killed run lost every epoch
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=1,
                                                  save_on_train_epoch_end=True)
    is_zero = _is_rank_zero()
    stage = f"bc{suffix}"
    logger = MetricsLogger(out_dir, stage, cfg.logger.mode if is_zero else "disabled", cfg.logger.project,
                           config=OmegaConf.to_container(cfg, resolve=True) if is_zero else None)
    callbacks = [selection, MetricsWriter(logger, selection, int(b.log_every), int(b.diag_every)), ckpt_cb]
    if bool(b.progress):
        callbacks.append(L.pytorch.callbacks.RichProgressBar())
    if _stop_after_epochs is not None:
        callbacks.append(_KillAtEpoch(int(_stop_after_epochs)))
    trainer = L.Trainer(max_epochs=int(b.epochs), max_steps=int(b.max_steps) if b.max_steps is not None else -1,
                        accelerator=str(b.accelerator), devices=int(b.devices), strategy=strategy,
                        precision=str(b.precision), gradient_clip_val=float(b.grad_clip), callbacks=callbacks,
                        logger=False, enable_progress_bar=bool(b.progress), num_sanity_val_steps=0,
                        use_distributed_sampler=False, enable_model_summary=False, deterministic=False,
                        log_every_n_steps=1)
    module.schedule_epochs = int(b.epochs)  # the LR schedule's length
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(last_ckpt) if resume else None)
    except _Killed:
        selection.close()
        logger.close()
        return {}
    wall = time.perf_counter() - t0
    selection.close()
    if _stop_after_epochs is not None or not trainer.is_global_zero:
        logger.close()
        return {}
    if selection.best is None:  # bc.eval_every=0: no closed-loop selection, the last weights are delivered
        selection.consider(trainer.current_epoch, trainer.global_step, model)
        selection.close()
    last_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    best = selection.best
    ckpt = {"kind": STUDENT_KIND, "model_kind": model.kind, "model_config": model.config_dict(),
            "state_dict": best["state_dict"], "last_state_dict": last_state,
            "selected": {"epoch": best["epoch"], "step": best["step"], "success_rate": best["success_rate"],
                         "episodes": n_eval, "seed_offset": selection.seed - int(cfg.seed)},
            "selection": selection.history, "env_name": env_name, "env_cfg": env_cfg,
            "obs_spec": full_spec.to_dict(),
            "dataset": {"path": str(data_path), "hash": dataset_hash(store), "episodes": store.committed_episodes,
                        "used_episodes": len(dm.arrays["ends"]),
                        "code_version": store.attrs.get("code_version", "unknown"),
                        "train_episodes": dm.train_episodes.tolist(), "val_episodes": dm.val_episodes.tolist(),
                        "extra": [{"path": str(p), "hash": dataset_hash(x), "episodes": x.committed_episodes,
                                   "actions": x.attrs.get("actions", "the teacher's")} for p, x in extras]},
            "init": init,
            "bc_cfg": OmegaConf.to_container(b, resolve=True), "seed": int(cfg.seed),
            "code_version": code_version(), "train_seconds": wall}
    torch.save(ckpt, student_path)
    logger.log({"selected_epoch": best["epoch"], "selected_success_rate": best["success_rate"],
                "train_seconds": wall, "iteration": trainer.global_step}, step=trainer.global_step)
    logger.close()
    from bc.plots import plot_bc

    plots = plot_bc(out_dir / "metrics.jsonl", out_dir / "plots", stage)
    last_rate = selection.history[-1]["success_rate"] if selection.history else float("nan")
    print(f"[bc] {model.kind}: selected epoch {best['epoch']} (closed-loop success {best['success_rate']:.1%} on "
          f"{n_eval} held-out episodes; last epoch {last_rate:.1%}); {wall:.0f} s; wrote {student_path}; "
          f"plots: {', '.join(p.name for p in plots)}")
    return {"student_ckpt": str(student_path), "model": model.kind, "selected_epoch": best["epoch"],
            "selected_success_rate": best["success_rate"], "last_success_rate": last_rate,
            "train_seconds": wall, "epochs": trainer.current_epoch, "steps": trainer.global_step}


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0
