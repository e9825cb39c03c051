"""``python pipeline.py stage=eval [eval.ckpt=PATH] [eval.num_episodes=N]``: the comparison table.

Every checkpoint (``eval.ckpt``, or all of the run directory's in the comparison's order:
teacher.pt, the baselines student_mlp.pt and student_rnn.pt (``bc.baselines``), student.pt,
finetuned.pt) plays the same ``eval.num_episodes`` episodes, seeded by
``common.evaluate.evaluation_seed`` (the teacher stage's table uses the same seeds and env, so a
teacher.pt reproduces its teacher_eval.json), once per available (policy device, sim device) pair,
with the env of the run's config (``env=``) and ``eval.perturbations`` (injected failures, off by
default). Writes ``eval.json`` (``rows``: one object per checkpoint and device pair, each with a
``label`` saying what it is) and ``eval.md`` in the run directory; evaluating the whole run
directory also writes ``comparison.md`` (what ``stage=all`` ends with: the same table, one line per
policy, with what each policy is).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from common.evaluate import (
    device_note,
    device_pairs,
    evaluate_policy,
    evaluation_env_config,
    evaluation_seed,
    format_table,
)
from common.metrics import dumps_json, json_safe
from common.policies import load_checkpoint, policy_from_checkpoint
from common.rundir import output_path, run_dir
from envs import make_env
from envs.base import ConfigError

PRODUCED_BY = {"teacher.pt": "teacher", "student*.pt": "bc", "finetuned.pt": "finetune"}
# the comparison's order: the teacher, the students without and with history, the fine-tuned one
_ORDER = ["teacher.pt", "student_mlp.pt", "student_rnn.pt", "student_transformer.pt", "student.pt", "finetuned.pt"]
_KIND_NAMES = {"mlp": "MLP student", "rnn": "LSTM student", "transformer": "history student"}


def label(path: Path, ckpt: dict) -> str:
    """What a checkpoint is, for the comparison table: "teacher (ppo_mlp)", "LSTM student", ..."""
    kind = ckpt.get("kind")
    if kind != "student":
        return f"teacher ({kind})"
    name = _KIND_NAMES.get(ckpt.get("model_kind"), f"{ckpt.get('model_kind')} student")
    return f"fine-tuned {name}" if "finetune" in ckpt else name


def _order(path: Path) -> tuple[int, str]:
    return (_ORDER.index(path.name) if path.name in _ORDER else len(_ORDER) - 1, path.name)


def checkpoints(cfg) -> list[Path]:
    """``eval.ckpt``, or every checkpoint of the run directory in the comparison's order."""
    if cfg.eval.ckpt:
        path = Path(str(cfg.eval.ckpt)).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"eval.ckpt={cfg.eval.ckpt} does not exist; pass the path of a teacher.pt, "
                              f"student.pt or finetuned.pt")
        return [path]
    out = run_dir(cfg)
    found = sorted({p for pattern in PRODUCED_BY for p in out.glob(pattern) if p.is_file()}, key=_order)
    if not found:
        makers = ", ".join(f"stage={stage} makes {name}" for name, stage in PRODUCED_BY.items())
        raise ConfigError(f"no checkpoint to evaluate in {out} ({makers}); run one of those stages with the same "
                          f"run_dir first, or pass eval.ckpt=PATH")
    return found


def simulators(cfg) -> list[str]:
    """``eval.simulators`` (e.g. [mujoco, isaaclab]: one table row per simulator), default the env's own."""
    sims = list(cfg.eval.get("simulators") or [cfg.env.get("simulator", "mujoco")])
    for sim in sims:
        if sim not in ("mujoco", "isaaclab"):
            raise ConfigError(f"eval.simulators has {sim!r}; choose from [mujoco, isaaclab]")
    return sims


def _videos(cfg, env, policy, seed: int, prefix: str) -> list[dict]:
    """``eval.videos`` GIFs of the first evaluation episodes (the ones the table counted first) in
    ``<run_dir>/videos``; where they cannot be made (no GL, or a simulator without a renderer) the table
    is still written and the reason printed and kept in eval.json."""
    from common.videos import record_first_episodes
    from envs.mujoco.render import RenderUnavailable

    if getattr(env, "simulator", "mujoco") != "mujoco":
        note = f"videos render MuJoCo envs only; {prefix} has none (evaluate with eval.simulators=[mujoco] for them)"
        print(f"[eval] {note}")
        return [{"prefix": prefix, "error": note}]
    try:
        made = record_first_episodes(env, policy, seed, int(cfg.eval.videos), run_dir(cfg) / "videos", prefix)
    except RenderUnavailable as exc:
        print(f"[eval] no videos: {exc}")
        return [{"prefix": prefix, "error": str(exc)}]
    print(f"[eval] {len(made)} videos of {prefix} in {run_dir(cfg) / 'videos'}")
    return made


def run(cfg) -> dict:
    n, seed = int(cfg.eval.num_episodes), evaluation_seed(cfg.seed)
    paths = checkpoints(cfg)
    # every checkpoint is read (and, per simulator, built) before anything is evaluated or written
    ckpts = [load_checkpoint(p, str(cfg.env.name)) for p in paths]
    json_path, md_path = output_path(cfg, "eval.json"), output_path(cfg, "eval.md")
    rows, videos = [], []
    for sim in simulators(cfg):
        env = make_env({**evaluation_env_config(cfg, n), "simulator": sim})
        cpu_policies = [policy_from_checkpoint(c, env, "cpu", p) for c, p in zip(ckpts, paths)]
        for path, ckpt, cpu_policy in zip(paths, ckpts, cpu_policies):
            for policy_device, _sim in device_pairs():
                if policy_device not in cpu_policy.devices:
                    continue
                policy = (cpu_policy if policy_device == "cpu"
                          else policy_from_checkpoint(ckpt, env, policy_device, path))
                result = evaluate_policy(env, policy, n, seed)
                rows.append({"policy": path.name, "label": label(path, ckpt), "kind": policy.kind,
                             "checkpoint": str(path), **result,
                             "mean_attempts": result["mean_attempts_to_success"]})
            if int(cfg.eval.videos) > 0:
                videos += _videos(cfg, env, cpu_policy, seed, f"{path.stem}_{sim}")
        env.close()  # Isaac Lab: one simulation per process at a time
    perturbations = OmegaConf.to_container(cfg.eval.perturbations, resolve=True)
    report = {"env": env.cfg.name, "seed": seed, "num_episodes": n, "num_envs": env.num_envs,
              "perturbations": perturbations, "devices": device_note(), "rows": rows}
    if int(cfg.eval.videos) > 0:
        report["videos"] = videos
    json_path.write_text(dumps_json(report))
    table = format_table(rows)
    failures = ", ".join(f"{k} {v:g}" for k, v in perturbations.items() if v) or "none"
    header = (f"{env.cfg.name}, {n} episodes per row on the same seeds (evaluation seed {seed}), "
              f"injected failures: {failures}")
    md_path.write_text(f"# Evaluation\n\n{header}\n\n{table}\n{device_note()}\n")
    if not cfg.eval.ckpt:  # the run's own checkpoints: the comparison stage=all ends with
        (run_dir(cfg) / "comparison.md").write_text(f"# Comparison\n\n{header}\n\n{table}\n{device_note()}\n")
    print(f"[eval] {header}\n{table}{device_note()}\n[eval] wrote {json_path} and {md_path}")
    return {"eval_json": str(json_path), "rows": json_safe(rows)}
