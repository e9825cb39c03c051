"""Callbacks of the BC Trainer: closed-loop selection and the metrics.jsonl writer.

ClosedLoopSelection: every ``every`` epochs (and after the last) the deterministic policy
(``common.policies.NetworkPolicy``: the mean action, memory carried, reset on done, previous action fed) plays
``episodes`` episodes on held-out seeds: ``common.evaluate.student_selection_seed(seed)``, apart from the
final evaluation's, the teacher selection's (both in common/evaluate.py) and the collection's (hashed
per round from the collect seed). It keeps the weights with the best success rate (ties: the
earliest; a later one has to be measurably better). Validation loss plays no part: with a
previous-action token it rewards copying the expert's last action (the copycat trap).
Its state (history, best weights) goes into Lightning's checkpoint, so a resumed run selects as the
uninterrupted one would. Only rank 0 evaluates (the other ranks' weights are identical under DDP).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import lightning as L
import torch

from common.evaluate import evaluate, student_selection_seed
from common.policies import NetworkPolicy


class ClosedLoopSelection(L.Callback):
    def __init__(self, make_env: Callable[[], object], every: int, episodes: int, seed: int):
        self.make_env, self.every, self.episodes = make_env, every, episodes
        self.seed = student_selection_seed(seed)
        self.env = None
        self.history: list[dict] = []
        self.best: dict | None = None  # {"epoch", "success_rate", "state_dict"}
        self.last_result: dict = {}

    def due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1  # epochs done
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        last = last or (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps)
        return self.every > 0 and (epoch % self.every == 0 or last)

    @torch.no_grad()
    def evaluate_model(self, model: torch.nn.Module) -> dict:
        if self.env is None:
            self.env = self.make_env()
        student = copy.deepcopy(model).cpu().eval()  # the env is on the CPU; training may be elsewhere
        policy = NetworkPolicy(student)
        return evaluate(self.env, policy.act, policy.reset, self.episodes, seed=self.seed, progress=False)

    def consider(self, epoch: int, step: int, model: torch.nn.Module) -> dict:
        t0 = time.perf_counter()
        result = self.evaluate_model(model)
        record = {"epoch": epoch, "step": step, "success_rate": result["success_rate"],
                  "mean_reward": result["mean_reward"], "mean_episode_length": result["mean_episode_length"],
                  "mean_attempts_to_success": result["mean_attempts_to_success"],
                  "eval_seconds": time.perf_counter() - t0}
        self.history.append(record)
        if self.best is None or record["success_rate"] > self.best["success_rate"]:
            self.best = {"epoch": epoch, "step": step, "success_rate": record["success_rate"],
                         "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        return record

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer) or not trainer.is_global_zero:
            return
        record = self.consider(trainer.current_epoch + 1, trainer.global_step, pl_module.model)
        self.last_result = {**record, "selected_epoch": self.best["epoch"],
                            "selected_success_rate": self.best["success_rate"]}
        pl_module.print(f"[bc] epoch {record['epoch']}: closed-loop success {record['success_rate']:.1%} on "
                        f"{self.episodes} held-out episodes (best {self.best['success_rate']:.1%} at epoch "
                        f"{self.best['epoch']})")

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best = list(state["history"]), state["best"]


class MetricsWriter(L.Callback):
    """Rank 0 writes what the module logged to ``MetricsLogger`` (metrics.jsonl and wandb): the train
    numbers every ``every`` steps, the model's internals (``BCModule.diagnostics``: residual ratios,
    attention entropies, memory norm; one extra no-grad pass on the batch just trained on) every
    ``diag_every`` steps (0: never), validation and closed-loop numbers per epoch."""

    def __init__(self, logger, selection: ClosedLoopSelection | None, every: int = 10, diag_every: int = 0):
        self.logger, self.selection, self.every, self.diag_every = logger, selection, every, diag_every
        self.t0 = time.perf_counter()
        self.samples = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        # BCModule logs (and measures the gradients) only on the steps it expects to be written
        if getattr(pl_module, "log_every", self.every) != self.every:
            raise ValueError(f"MetricsWriter writes every {self.every} steps, the module logs every "
                             f"{pl_module.log_every}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # samples = the steps in the loss (padding and burn-in out): windows or carry's streams alike
        real = int(batch["valid"][:, pl_module.burn_in:].sum())
        self.samples += real * trainer.world_size
        step = trainer.global_step
        if not trainer.is_global_zero:
            return
        m = {}
        # A batch of padding only (bc.memory_start=carry: an epoch's last chunks, where that epoch's deal of
        # episodes to streams is shorter than the run's longest) has a loss of 0 that measures nothing:
        # its train numbers are left out (under DDP: when rank 0's share is padding only).
        if step % self.every == 0 and real > 0:
            m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train_", "lr"))}
            m.update(pl_module.grad_stats)
            m.update(samples_per_s=self.samples / (time.perf_counter() - self.t0))
        if self.diag_every and step % self.diag_every == 0:
            with trainer.precision_plugin.train_step_context():  # the precision the model trains in
                m.update(pl_module.diagnostics(batch))
        if m:
            m.update(epoch=trainer.current_epoch, iteration=step)
            self.logger.log(m, step=step)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if self.selection is not None and self.selection.last_result.get("epoch") == trainer.current_epoch + 1:
            m.update({f"closed_loop_{k}": v for k, v in self.selection.last_result.items()
                      if k not in ("epoch", "step")})
        m.update(epoch=trainer.current_epoch + 1, iteration=trainer.global_step)
        self.logger.log(m, step=trainer.global_step)
