"""Students side by side on one dataset: each trained by ``stage=bc`` and evaluated by ``stage=eval``
on the same held-out seeds, with its training wall time. Behind the README's student rows, the
ablation table and the retry-vs-clean experiment.

    python bench/students.py --dataset D.zarr --env pick_loose --out bench/results/NAME \\
        --run mlp:bc.model=mlp --run transformer: [--run NAME:OVERRIDE,OVERRIDE ...] \\
        [--common "bc.epochs=24 ..."] [--episodes 200] [--parallel 2] [--eval-perturbations]

Each ``--run NAME:overrides`` (comma-separated Hydra overrides, applied after ``--common``) trains in
``OUT/NAME/`` and is evaluated on ``--episodes`` episodes of the evaluation seeds (``stage=eval``:
the seeds every checkpoint is reported on). ``--parallel`` runs that many trainings at once, each
with one torch thread (2 on 2 cores: wall times are then those of a shared machine, and say so).
``--teacher PATH`` adds the teacher's row. ``--eval-perturbations`` also evaluates every checkpoint
with the collection's injected failures on (``eval.perturbations.*``).

Writes ``OUT/summary.json`` and ``OUT/summary.md``; the last line printed is one JSON object with
``ours`` (the first run's success rate), ``baseline`` (the second's), ``ratio``, and every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# the collection's injected failures (configs/collect/default.yaml), read there so the two cannot drift apart
PERTURBED = [f"eval.perturbations.{k}={v}" for k, v in
             yaml.safe_load((ROOT / "configs" / "collect" / "default.yaml").read_text())["perturbations"].items()]


def pipeline(args: list[str], log: Path, threads: int | None) -> int:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "w") as f:
        return subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *args], stdout=f, stderr=subprocess.STDOUT,
                              env=env, cwd=ROOT).returncode


def evaluate(ckpt: Path, env: str, episodes: int, out: Path, extra: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rc = pipeline(["stage=eval", f"env={env}", f"eval.ckpt={ckpt}", f"eval.num_episodes={episodes}",
                   f"run_dir={out}", "logger.mode=disabled", "overwrite=true", *extra], out / "eval.log", None)
    if rc != 0:
        raise SystemExit(f"evaluation of {ckpt} failed (exit {rc}); see {out / 'eval.log'}")
    row = json.loads((out / "eval.json").read_text())["rows"][0]
    return {k: row[k] for k in ("successes", "episodes", "success_rate", "mean_reward", "mean_episode_length",
                                "mean_attempts")}


def train(name: str, overrides: list[str], a) -> dict:
    run_dir = a.out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rc = pipeline(["stage=bc", f"env={a.env}", f"bc.dataset={a.dataset}", f"run_dir={run_dir}", "bc.progress=false",
                   "logger.mode=disabled", "overwrite=true", "bc.baselines=[]",
                   *a.common.split(), *overrides], run_dir / "bc.log",
                  1 if a.parallel > 1 else None)
    if rc != 0:
        raise SystemExit(f"training {name} failed (exit {rc}); see {run_dir / 'bc.log'}")
    summary = json.loads((run_dir / "pipeline_summary.json").read_text())["bc"]
    return {"name": name, "overrides": overrides, "wall_s": round(time.perf_counter() - t0, 1),
            "train_seconds": round(summary["train_seconds"], 1), "steps": summary["steps"],
            "selected_epoch": summary["selected_epoch"], "selection_success_rate": summary["selected_success_rate"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--env", default="pick_loose")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run", action="append", required=True, help="NAME:override,override")
    p.add_argument("--common", default="", help="overrides for every run (space-separated)")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--teacher", type=Path)
    p.add_argument("--eval-perturbations", action="store_true")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    runs = [(spec.split(":", 1)[0], [o for o in spec.split(":", 1)[1].split(",") if o]) for spec in a.run]
    with ThreadPoolExecutor(a.parallel) as pool:
        rows = list(pool.map(lambda r: train(r[0], r[1], a), runs))
    for row in rows:
        ckpt = a.out / row["name"] / "student.pt"
        row["eval"] = evaluate(ckpt, a.env, a.episodes, a.out / row["name"] / "eval", [])
        if a.eval_perturbations:
            row["eval_perturbed"] = evaluate(ckpt, a.env, a.episodes, a.out / row["name"] / "eval_perturbed", PERTURBED)
    if a.teacher:
        teacher = {"name": "teacher", "eval": evaluate(a.teacher, a.env, a.episodes, a.out / "teacher_eval", [])}
        if a.eval_perturbations:
            teacher["eval_perturbed"] = evaluate(a.teacher, a.env, a.episodes, a.out / "teacher_eval_perturbed",
                                                 PERTURBED)
        rows.append(teacher)
    lines = ["| run | success | mean reward | mean length | attempts | train s | steps | overrides |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["eval"]
        perturbed = f" ({r['eval_perturbed']['success_rate']:.1%} perturbed)" if "eval_perturbed" in r else ""
        lines.append(f"| {r['name']} | {e['successes']}/{e['episodes']} ({e['success_rate']:.1%}){perturbed} | "
                     f"{e['mean_reward']:.2f} | {e['mean_episode_length']:.1f} | {e['mean_attempts']:.2f} | "
                     f"{r.get('train_seconds', '')} | {r.get('steps', '')} | {' '.join(r.get('overrides', []))} |")
    table = "\n".join(lines)
    print(table)
    result = {"dataset": str(a.dataset), "env": a.env, "common": a.common, "episodes": a.episodes,
              "parallel": a.parallel, "command": " ".join(sys.argv), "rows": rows}
    (a.out / "summary.json").write_text(json.dumps(result, indent=2))
    (a.out / "summary.md").write_text(table + "\n")
    ours, base = rows[0]["eval"]["success_rate"], rows[1]["eval"]["success_rate"] if len(rows) > 1 else None
    print(json.dumps({"ours": ours, "baseline": base, "ratio": ours / base if base else None, **result}))


if __name__ == "__main__":
    main()
