"""DAgger rounds from a behaviour-cloned student: each round the latest student acts (``stage=collect
collect.actor=...``, the PPO teacher labels its states), then behaviour cloning goes on from its weights on the
demonstrations plus every round's labels (``stage=bc bc.extra_datasets=[...] bc.init_ckpt=...``), and the new
student is evaluated by ``stage=eval`` on the evaluation seeds beside the start.

    python bench/dagger_rounds.py --env stack_pick_multi --demos R/dataset.zarr --teacher R/teacher.pt \\
        --student S/student.pt --out bench/results/NAME [--rounds 3] [--episodes 500] [--eval 200] \\
        [--bc "bc.epochs=8 bc.lr=3e-4"] [--preset full]

Round r collects with ``seed=r`` (fresh start states) into ``OUT/round<r>/labels`` and trains in
``OUT/round<r>/student``; a round whose outputs exist is skipped, so a killed run resumes at its round.
Writes ``OUT/summary.json``; the last line printed is one JSON object with ``ours`` (the last round's success
rate), ``baseline`` (the start's), ``ratio``, and every round.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from students import evaluate, pipeline  # noqa: E402  (bench/students.py: the same subprocess and eval)


def run_round(r: int, student: Path, extras: list[Path], a) -> tuple[Path, Path, dict]:
    labels, trained = a.out / f"round{r}" / "labels", a.out / f"round{r}" / "student"
    store = labels / "dataset.zarr"
    times = {}
    if not (labels / "pipeline_summary.json").exists():  # collection resumes its own store when re-run
        labels.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        rc = pipeline(["stage=collect", f"env={a.env}", f"preset={a.preset}", f"seed={r}", "threads=1",
                       f"collect.actor={student}", f"collect.teacher_ckpt={a.teacher}", "collect.keep=all",
                       f"collect.num_episodes={a.episodes}", f"collect.num_envs={a.num_envs}", f"run_dir={labels}",
                       "logger.mode=disabled"], labels / "collect.log", 1)
        if rc != 0:
            raise SystemExit(f"round {r}: collection failed (exit {rc}); see {labels / 'collect.log'}")
        times["collect_s"] = round(time.perf_counter() - t0, 1)
    if not (trained / "student.pt").exists():
        trained.mkdir(parents=True, exist_ok=True)
        stores = ",".join(str(p) for p in [*extras, store])
        t0 = time.perf_counter()
        rc = pipeline(["stage=bc", f"env={a.env}", f"preset={a.preset}", "threads=1", f"bc.dataset={a.demos}",
                       f"bc.extra_datasets=[{stores}]", f"bc.init_ckpt={student}", "bc.progress=false",
                       "bc.baselines=[]", f"run_dir={trained}", "logger.mode=disabled", "overwrite=true",
                       *a.bc.split()], trained / "bc.log", 1)
        if rc != 0:
            raise SystemExit(f"round {r}: behaviour cloning failed (exit {rc}); see {trained / 'bc.log'}")
        times["bc_s"] = round(time.perf_counter() - t0, 1)
    return store, trained / "student.pt", times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="stack_pick_multi")
    p.add_argument("--demos", type=Path, required=True, help="the demonstrations the student was cloned from")
    p.add_argument("--teacher", type=Path, required=True, help="the PPO teacher.pt that labels")
    p.add_argument("--student", type=Path, required=True, help="the behaviour-cloned student.pt to start from")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=500, help="labelled student episodes per round")
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--eval", type=int, default=200, help="evaluation episodes per student (0: none)")
    p.add_argument("--bc", default="bc.epochs=8 bc.lr=3e-4 bc.eval_every=4", help="stage=bc overrides per round")
    p.add_argument("--preset", default="full")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for path in (a.demos, a.teacher, a.student):
        if not path.exists():
            raise SystemExit(f"{path} does not exist")  # one line, before any round starts
    rows, student, extras = [], a.student.resolve(), []
    if a.eval:
        start = evaluate(student, a.env, a.eval, a.out / "round0_eval", [])
        rows.append({"round": 0, "student": str(student), **start})
    for r in range(1, a.rounds + 1):
        store, student, times = run_round(r, student, extras, a)
        extras.append(store)
        row = {"round": r, "student": str(student), "labelled_episodes": a.episodes * r, **times}
        bc = json.loads((student.parent / "pipeline_summary.json").read_text())["bc"]
        row.update(selected_epoch=bc["selected_epoch"], selection_success_rate=bc["selected_success_rate"])
        if a.eval:
            row.update(evaluate(student, a.env, a.eval, a.out / f"round{r}" / "eval", []))
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"command": " ".join(sys.argv), "rows": rows}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if a.eval:
        ours, base = rows[-1]["success_rate"], rows[0]["success_rate"]
        print(json.dumps({"ours": ours, "baseline": base, "ratio": ours / base if base else None, "rows": rows}))


if __name__ == "__main__":
    main()
