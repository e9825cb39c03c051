"""Does a history transformer's carried memory know which cube on the table is the welded one it tried?

    python bench/results/bc_spm_scripted/memory_probe.py NAME=CKPT [--rounds 6] [--seed 5]

Rolls the student out on StackPickMulti-v1 (the evaluation env, `rounds` x 64 first episodes from
evaluation seed `seed`, apart from the README's 0-2) and records, after every step, the carried memory
tokens (M x D) and the policy observation. Samples: in the episodes where a failed lift revealed a welded
cube, every (step after that reveal, cube lying on the table: not held, not on the tower); label: it is
the revealed welded cube. What the policy must not do is go back to it, and the observation alone does
not tell it from a loose cube lying there (the reference probe measures how far it does). One logistic
regression per cube index (L2 1e-3, L-BFGS) on the first half of the rounds, scored on the second half
by ROC AUC, per range of steps since the reveal; the same on memory and observation together. AUC 0.5: no
linear trace; memory+observation above observation: what the memory adds. Writes memory_probe.json."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

import pipeline  # noqa: E402
from common.evaluate import ROUND_STRIDE, evaluation_env_config, evaluation_seed, one_thread  # noqa: E402
from common.policies import load_policy  # noqa: E402
from common.rollout import first_episodes  # noqa: E402
from envs import make_env  # noqa: E402

BINS = ((0, 16), (16, 48), (48, 100), (100, 400))  # steps since the welded cube was revealed


def trace_round(env, policy, seed: int) -> dict[str, np.ndarray]:
    """One round of first episodes: (T, N, C) known / lying-free flags, (T, N) alive, (T, N, M*D) memory
    after each step's act, (T, N, D_obs) the observation acted on, (N, C) the welded flags."""
    trace: dict[str, list] = {k: [] for k in ("known", "free", "alive", "memory", "obs")}
    static = {}

    def before(alive):
        f = env._frame()
        C = f.n_cubes
        trace["known"].append(f.known[:, :C].copy())
        trace["free"].append(~f.held[:, :C] & ~env.task.placed(f)[:, :C])  # lying on the table
        trace["alive"].append(alive.copy())
        static.setdefault("x", f.static[:, :C].copy())  # the first episode's (envs auto-reset later)

    def on_step(step):
        trace["memory"].append(policy.memory.tokens.reshape(env.num_envs, -1).numpy().copy())
        trace["obs"].append(step.obs["policy"].numpy().copy())
    with one_thread():
        first_episodes(env, policy.act, policy.reset, seed=seed, before_step=before, on_step=on_step)
    return {**{k: np.stack(v) for k, v in trace.items()}, "static": static["x"]}


def collect(env, policy, rounds: int, seed: int) -> dict[str, np.ndarray]:
    rows: dict[str, list] = {k: [] for k in ("memory", "obs", "welded", "cube", "since", "round")}
    for r in range(rounds):
        tr = trace_round(env, policy, evaluation_seed(seed) + ROUND_STRIDE * r)
        welded_known = tr["known"] & tr["static"][None]  # (T, N, C)
        revealed_at = np.where(welded_known.any((0, 2)), welded_known.any(2).argmax(0), 10**6)  # (N,)
        T = len(tr["alive"])
        after = (np.arange(T)[:, None] >= revealed_at[None]) & tr["alive"]  # (T, N)
        t, i, c = np.nonzero(after[..., None] & tr["free"])
        rows["memory"].append(tr["memory"][t, i])
        rows["obs"].append(tr["obs"][t, i])
        rows["welded"].append(welded_known[t, i, c])
        rows["cube"].append(c)
        rows["since"].append(t - revealed_at[i])
        rows["round"].append(np.full(len(t), r))
    return {k: np.concatenate(v) for k, v in rows.items()}


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach(), b.detach()


def auc(score: np.ndarray, label: np.ndarray) -> float:
    pos, neg = label.sum(), len(label) - label.sum()
    if not pos or not neg:
        return float("nan")
    rank = np.empty(len(score))
    rank[np.argsort(score)] = np.arange(1, len(score) + 1)
    return float((rank[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def probe(features: np.ndarray, d: dict, rounds: int) -> dict:
    out: dict[str, list] = {f"{lo}-{hi}": [] for lo, hi in BINS}
    y = torch.tensor(d["welded"], dtype=torch.float32)
    for cube in np.unique(d["cube"]):
        train = (d["cube"] == cube) & (d["round"] < rounds // 2)
        test = (d["cube"] == cube) & (d["round"] >= rounds // 2)
        x = torch.tensor(features, dtype=torch.float32)
        x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
        w, b = fit_logistic(x[train], y[train])
        score = (x @ w + b).numpy()
        for lo, hi in BINS:
            m = test & (d["since"] >= lo) & (d["since"] < hi)
            out[f"{lo}-{hi}"].append({"cube": int(cube), "auc": auc(score[m], d["welded"][m]), "samples": int(m.sum()),
                                      "welded_share": float(d["welded"][m].mean()) if m.any() else float("nan")})
    return out


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="+", help="NAME=CKPT")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=pipeline.CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["env=stack_pick_multi", "preset=full"])
    env = make_env(evaluation_env_config(cfg, 64))
    path_out = Path(__file__).with_suffix(".json")
    out = json.loads(path_out.read_text()) if path_out.exists() else {}
    for name, path in (a.split("=", 1) for a in args.checkpoints):
        d = collect(env, load_policy(path, env), args.rounds, args.seed)
        out[name] = {"checkpoint": path, "rounds": args.rounds, "seed": args.seed, "samples": int(len(d["welded"])),
                     "memory": probe(d["memory"], d, args.rounds), "observation": probe(d["obs"], d, args.rounds),
                     "memory+observation": probe(np.concatenate([d["memory"], d["obs"]], 1), d, args.rounds)}
        for what in ("memory", "observation", "memory+observation"):
            print(name, what, {k: [round(c["auc"], 3) for c in v] for k, v in out[name][what].items()})
    path_out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
