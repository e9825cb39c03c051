"""The LightningModule around a student (rl/student/: the model imports no Lightning).

Loss: ``bc_loss``: the Gaussian NLL of the dataset's raw actions (never clipped) plus
``mse_weight`` x MSE of the mean, over the valid window steps. The memory at a window's start comes
from a burn-in (``batch["reset"]`` marks where each row's memory starts from zero: its episode's
start, or its burn-in's first step), run under no_grad, detached; the window itself is one
``forward_sequence`` call: block-recurrent for the transformer (parallel inside a block, the memory
carried block to block), full BPTT through the window for the LSTM. The MLP has no memory: its
items carry no burn-in.

``memory_start="carry"`` (truncated BPTT, bc/streams.py): a batch is the next chunk of each stream,
and its memory is the one the previous chunk ended with, detached, kept here per loop (training and
validation apart); each training epoch and each validation loop start from the model's initial
memory (None), and the chunk's ``reset`` restarts it at each episode's first step. ``"episodes"``
is the same with rows that each begin at an episode's start (whole episodes packed): what is carried
over is never used.

AdamW (no weight decay on the log-std, the norms and the embeddings), cosine schedule with linear
warm-up, per optimizer step; gradient clipping is the Trainer's (``gradient_clip_val``).
"""

from __future__ import annotations

import math

import lightning as L
import torch

from bc.data import STREAMED
from rl.student.head import bc_loss, burn_in


class BCModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, warmup_steps: int,
                 mse_weight: float, burn_in: int, seed: int, min_lr_ratio: float = 0.1,
                 memory_start: str = "burn_in", log_every: int = 1, aux_weight: float = 0.0, aux_dim: int = 0):
        super().__init__()
        self.model = model
        # bc.aux_hidden_weight: a linear probe on the head's input, trained beside the policy to predict the
        # privileged hidden flags (batch["aux"]): a dense signal for the memory to keep what the policy group
        # hides. Training only: the student (self.model, student.pt) holds no part of it.
        self.aux_weight = aux_weight
        self.aux_head = torch.nn.Linear(_feature_dim(model), aux_dim) if aux_weight > 0 and aux_dim else None
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.mse_weight, self.burn_in, self.seed = mse_weight, burn_in, seed
        self.min_lr_ratio = min_lr_ratio
        self.log_every = max(int(log_every), 1)  # the steps whose numbers MetricsWriter writes (bc.log_every)
        self.carry = memory_start in STREAMED  # carry and episodes: chunks of streams (bc/streams.py)
        if self.carry and burn_in:
            raise ValueError(f"memory_start={memory_start!r} takes no burn-in (the memory comes from the chunk before)")
        self._carry: dict[str, object] = {}  # loop -> memory at its next chunk's start (None: initial)
        self._carry_in: dict[str, object] = {}  # loop -> memory its last chunk started from (diagnostics)
        self.grad_stats: dict[str, float] = {}
        self.schedule_epochs: int | None = None  # the LR schedule spans this many epochs (default: max_epochs)

    def window_inputs(self, batch: dict, memory: object = None) -> tuple[dict, torch.Tensor, object]:
        """The window's observations (B, T, .), its resets (B, T) and the memory its first step starts
        from: the burn-in's, run under no_grad and detached; else ``memory`` (carry: the previous
        chunk's; None: the model's initial memory)."""
        obs = {"policy": batch["policy"], "prev_action": batch["prev_action"]}
        return burn_in(self.model, obs, batch["reset"], self.burn_in, memory)

    def loss(self, batch: dict, loop: str = "train", spread: bool = True) -> tuple[torch.Tensor, dict]:
        """The loss of a batch; with carry, ``loop``'s memory goes in and the memory after the chunk is
        kept, detached, for its next chunk (gradients stay inside a chunk). ``spread``: also the batch
        std of the mean action (a masked gather and a host sync: only on steps that are logged)."""
        B = self.burn_in
        memory0 = self._carry.get(loop) if self.carry else None
        inputs = self.window_inputs(batch, memory0)
        if self.aux_head is None:  # forward_sequence: what bench/bc_throughput.py's per-step loop replaces
            dist, memory = self.model.forward_sequence(*inputs)
        else:  # the same, split at the head's input, which the aux probe reads too
            features, memory = self.model.sequence_features(*inputs)  # (B, T, F)
            dist = self.model.head(features, self.model.norm)
        if self.carry:
            self._carry_in[loop] = memory0
            self._carry[loop] = memory.detach() if memory is not None else None
        loss, info = bc_loss(dist, batch["action"][:, B:], batch["valid"][:, B:], self.mse_weight)
        valid = batch["valid"][:, B:]
        info["n"] = valid.sum().to(loss.dtype)
        if self.aux_head is not None:
            aux = torch.nn.functional.binary_cross_entropy_with_logits(
                self.aux_head(features)[valid], batch["aux"][:, B:][valid]) if valid.any() else loss.new_zeros(())
            loss = loss + self.aux_weight * aux
            info["aux_bce"] = aux.detach()
        if spread:
            info["action_spread"] = dist.mean[valid].std(0).mean().detach() if valid.sum() > 1 else loss.new_zeros(())
        return loss, info

    def log_due(self) -> bool:
        """Whether the optimizer step under way is one whose numbers are written: MetricsWriter writes
        after step s when s % log_every == 0, and the hooks before it see global_step = s - 1."""
        return (self.trainer.global_step + 1) % self.log_every == 0

    def diagnostics(self, batch: dict) -> dict[str, float]:
        """The model's internals (rl/student/diagnostics.py) on a training batch's windows, measured on
        the steps the loss sees. In eval mode: the previous-action dropout or noise would draw from
        the training RNG, so turning diagnostics on would change the run (and its exact resume)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                obs, resets, memory = self.window_inputs(batch, self._carry_in.get("train"))
                return self.model.diagnostics(obs, resets, memory, batch["valid"][:, self.burn_in:])
        finally:
            self.model.train(was_training)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # The training RNG (previous-action dropout or noise) is a function of (seed, epoch, rank), so a
        # run resumed at an epoch boundary draws what the uninterrupted run drew. Seeded at the epoch's
        # first batch, not in on_train_epoch_start: the DataLoader draws its base seed from the global
        # RNG when its iterator is made, and a resumed run makes it at another moment (measured).
        if batch_idx == 0:
            torch.manual_seed(self.seed * 1000003 + self.current_epoch * 7919 + self.global_rank)
            self._carry.pop("train", None)  # carry: an epoch's streams start from no memory

    def on_validation_epoch_start(self) -> None:
        self._carry.pop("val", None)  # carry: the validation streams start from no memory, each loop

    def training_step(self, batch, batch_idx):
        due = self.log_due()
        loss, info = self.loss(batch, spread=due)
        world = self.trainer.world_size
        if world > 1:  # weight by the global count of valid steps: DDP's mean of gradients = one process's
            n = info.pop("n")
            loss = loss * n * world / self.all_gather(n).sum().clamp_min(1.0)
        info.pop("n", None)
        # Logged only on the steps MetricsWriter writes (the bar's loss moves every log_every steps): each
        # self.log is ~0.4 ms of Lightning bookkeeping (6 a step: ~2-3% of a 1-thread CPU step), and
        # sync_dist is an all-reduce per metric under DDP, so it is asked for only with more than one process.
        if due:
            sync = world > 1
            self.log("train_loss", loss, prog_bar=True, sync_dist=sync, on_step=True, on_epoch=False)
            for k, v in info.items():
                self.log(f"train_{k}", v, sync_dist=sync, on_step=True, on_epoch=False)
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, info = self.loss(batch, "val", spread=False)  # validation logs no spread
        n = float(info.pop("n"))
        self.log("val_loss", loss, prog_bar=True, sync_dist=True, batch_size=max(int(n), 1))
        self.log("val_mse", info["mse"], sync_dist=True, batch_size=max(int(n), 1))
        if "aux_bce" in info:  # val_loss includes aux_hidden_weight x this
            self.log("val_aux_bce", info["aux_bce"], sync_dist=True, batch_size=max(int(n), 1))

    def on_before_optimizer_step(self, optimizer) -> None:
        # gradient norms before clipping (Lightning clips after this hook), per top-level part; only on
        # the steps MetricsWriter writes them (a norm and a host sync per parameter tensor)
        if not self.log_due():
            return
        groups: dict[str, list[torch.Tensor]] = {}
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                parts = name.split(".")
                key = ".".join(parts[:2]) if parts[0] == "layers" else parts[0]
                groups.setdefault(key, []).append(p.grad.detach())
        stats = {}
        for key, grads in groups.items():
            stats[f"grad_l2/{key}"] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            stats[f"grad_max/{key}"] = float(max(g.abs().max() for g in grads))
        stats["grad_l2"] = math.sqrt(sum(v ** 2 for k, v in stats.items() if k.startswith("grad_l2/")))
        self.grad_stats = stats

    def configure_optimizers(self):
        decay, no_decay = [], []
        named = list(self.model.named_parameters())
        named += list(self.aux_head.named_parameters()) if self.aux_head is not None else []
        for name, p in named:
            (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)
        total = float(self.trainer.estimated_stepping_batches)
        max_epochs = self.trainer.max_epochs or 0
        if self.schedule_epochs and max_epochs > 0 and self.trainer.max_steps < 0:
            total = total / max_epochs * self.schedule_epochs
        total = max(int(total), 1)
        warm, floor = self.warmup_steps, self.min_lr_ratio

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min((step - warm) / max(total - warm, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["student_config"] = self.model.config_dict()


def _feature_dim(model: torch.nn.Module) -> int:
    """Width of the head's input (``sequence_features``' last dim): the head's first Linear's input."""
    return next(m for m in model.head.modules() if isinstance(m, torch.nn.Linear)).in_features
