"""Can the history transformer's gated memory hold one bit for 120 steps, and what does it take to learn it?

    python bench/results/bc_spm_scripted/long_memory_bit.py [--steps 150] [--kind transformer|rnn]

A constructed task: episodes of 128 steps, a bit (+-1) in the first observation column at step 0 only
(noise elsewhere), the target action's first entry the bit at steps 0-7 and 112-127, zero in between.
The StackPickMulti student's size (d_model 64, 2 layers, 4 heads, M 4 memory tokens, K 8-step blocks).
Trained (AdamW lr 1e-3, batch 16, gradient clip 1, the BC loss with the MSE term) either over the whole
episode (backprop through all 16 memory updates) or as stage=bc's carry does: chunks of 32 steps, the
memory carried to the next chunk detached (truncated BPTT); each with the gate bias 1 (the default) and 3.
``--kind rnn``: the LSTM student of `preset=full` (2 layers of 256) in the same two ways.
Scored on 512 fresh episodes: the sign of the mean action at steps 112-127 (late) and 0-7 (early).
Writes long_memory_bit.json beside itself (rows of other kinds or step counts kept)."""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from envs.base import ObsSpec, ObsTerm  # noqa: E402
from rl.student.head import bc_loss  # noqa: E402
from rl.student.model import build_student  # noqa: E402

T = 128
SPEC = ObsSpec({"policy": [ObsTerm("gripper", "pos", 0, 3), ObsTerm("cube0", "pos", 3, 6),
                           ObsTerm("cube1", "pos", 6, 9)]})


def episodes(n: int, g: torch.Generator) -> tuple[dict, torch.Tensor]:
    bit = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1  # (n,)
    obs = 0.3 * torch.randn(n, T, 9, generator=g)  # (n, T, 9) noise that tells nothing
    obs[:, :, 0] = 0
    obs[:, 0, 0] = bit
    action = torch.zeros(n, T, 5)
    action[:, :8, 0] = bit[:, None]
    action[:, T - 16:, 0] = bit[:, None]  # needed 112 steps after it was shown
    return {"policy": obs}, action


CONFIGS = {"transformer": lambda gate_bias: {"d_model": 64, "n_heads": 4, "n_layers": 2, "n_memory": 4, "block": 8,
                                             "head_hidden": [64], "init_std": 0.5, "gate_bias": gate_bias},
           "rnn": lambda gate_bias: {"hidden": [256], "rnn_hidden": 256, "rnn_layers": 2, "head_hidden": [64],
                                     "init_std": 0.5}}


def train_and_score(chunk: int, gate_bias: float | None, steps: int, kind: str = "transformer", seed: int = 0,
                    batch: int = 16) -> dict:
    torch.manual_seed(seed)
    model = build_student(kind, SPEC, CONFIGS[kind](gate_bias))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for _ in range(steps):
        obs, action = episodes(batch, g)
        memory = None
        for c0 in range(0, T, chunk):  # chunk == T: the whole episode, full backprop
            part = {k: v[:, c0:c0 + chunk] for k, v in obs.items()}
            starts = torch.zeros(batch, part["policy"].shape[1], dtype=torch.bool)
            starts[:, 0] = c0 == 0
            dist, memory = model.forward_sequence(part, starts, memory)
            loss, _ = bc_loss(dist, action[:, c0:c0 + chunk], mse_weight=1.0)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            memory = memory.detach()  # the next chunk starts from it without a gradient path back
    model.eval()
    obs, action = episodes(512, torch.Generator().manual_seed(123))
    starts = torch.zeros(512, T, dtype=torch.bool)
    starts[:, 0] = True
    with torch.no_grad():
        mean = model.forward_sequence(obs, starts)[0].mean
    right = (mean[..., 0] > 0) == (action[..., 0] > 0)  # (512, T)
    return {"kind": kind, "chunk": chunk, "gate_bias": gate_bias, "steps": steps,
            "late_accuracy": right[:, T - 16:].float().mean().item(),
            "early_accuracy": right[:, :8].float().mean().item(), "seconds": round(time.time() - t0)}


def main() -> list:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--kind", default="transformer", choices=sorted(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = Path(__file__).with_suffix(".json")
    before = json.loads(path.read_text()) if path.exists() else []
    out = [r for r in before if (r["kind"], r["steps"]) != (args.kind, args.steps)]
    runs = ((T, 1.0), (32, 1.0), (T, 3.0), (32, 3.0)) if args.kind == "transformer" else ((T, None), (32, None))
    for chunk, gate_bias in runs:
        out.append(train_and_score(chunk, gate_bias, args.steps, args.kind))
        print(out[-1], flush=True)
    path.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
