"""``python pipeline.py stage=collect``: the teacher demonstrates, with injected failures, into zarr.

Input: ``collect.teacher_ckpt`` (default ``<run_dir>/teacher.pt``; with ``teacher=scripted`` and no
checkpoint, the scripted expert). Output: ``collect.out`` (default ``<run_dir>/dataset.zarr``).
DAgger (``collect.actor=STUDENT``): the student acts, the PPO teacher labels every state it visits, the
store's ``action`` holds the labels, and ``collect.keep=all`` keeps the failed episodes too; ``stage=bc
bc.extra_datasets=[...] bc.init_ckpt=STUDENT`` then learns from the demonstrations and the labels.
Re-running the same command resumes an interrupted store; a store made with another env config is
refused.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from collect.collector import EPISODE_LAYOUT, FilterConfig, collect, data_layout, file_sha256
from collect.parallel import collect_parallel
from common.policies import load_checkpoint, policy_from_checkpoint
from common.rundir import code_version, run_dir
from common.teacher_labels import TeacherLabels
from datasets.store import EpisodeStore
from datasets.summary import summarize
from envs import env_config_dict, env_config_with, make_env
from envs.base import ConfigError


def run(cfg) -> dict:
    c = cfg.collect
    collect_env_cfg = env_config_with(cfg.env, c.perturbations, num_envs=int(c.num_envs))
    ckpt_path = Path(c.teacher_ckpt).expanduser().resolve() if c.teacher_ckpt else run_dir(cfg) / "teacher.pt"
    env = make_env(collect_env_cfg)
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, env.cfg.name)
        teacher_kind, teacher_sha = ckpt["kind"], file_sha256(ckpt_path)
    elif cfg.teacher.kind == "scripted":
        ckpt, teacher_kind, teacher_sha = {"kind": "scripted"}, "scripted", ""
    else:
        raise ConfigError(f"teacher checkpoint {ckpt_path} does not exist; run stage=teacher first, pass "
                          f"collect.teacher_ckpt=PATH, or use teacher=scripted")
    actor, labels, actor_attrs = _dagger_actor(c, ckpt, ckpt_path, env)
    # DAgger: the student acts and the teacher only labels (TeacherLabels holds its network): no second copy
    player = actor or policy_from_checkpoint(ckpt, env, path=ckpt_path)  # who acts

    out = Path(c.out).expanduser().resolve() if c.out else run_dir(cfg) / "dataset.zarr"
    attrs = {"env": env.cfg.name, "simulator": collect_env_cfg["simulator"], "env_cfg": collect_env_cfg,
             "obs_spec": env.obs_spec.to_dict(),
             "teacher": teacher_kind, "teacher_sha256": teacher_sha, "code_version": code_version(),
             "seed": int(cfg.seed), "collect_cfg": OmegaConf.to_container(c, resolve=True),
             "action_bounds": [-1.0, 1.0], **actor_attrs}
    keep_failures = str(c.keep) == "all"
    if keep_failures and c.retry_share_target is not None:
        raise ConfigError("collect.keep=all keeps every episode; collect.retry_share_target (a kept mix) needs "
                          "collect.keep=success: drop one of them")
    filters = FilterConfig(max_attempts=int(c.max_attempts), keep_failures=keep_failures,
                           retry_share_target=None if c.retry_share_target is None else float(c.retry_share_target))
    target = int(c.num_episodes)
    if int(c.workers) > 1:
        if actor is not None:
            raise ConfigError("collect.actor (DAgger) runs in one process; set collect.workers=1")
        if out.exists():
            raise ConfigError(f"{out} already exists; parallel collection (collect.workers > 1) writes a new store: "
                              f"choose another collect.out, or resume this one with collect.workers=1")
        job = {"env_cfg": collect_env_cfg, "teacher_ckpt": str(ckpt_path) if teacher_kind != "scripted" else "",
               "attrs": attrs, "target": target, "seed": int(cfg.seed), "flush_every": int(c.flush_every),
               "filters": {"max_attempts": filters.max_attempts, "retry_share_target": None}}
        print(f"[collect] {c.workers} workers, shards in {out}.shards/")
        store = collect_parallel(out, int(c.workers), job, data_layout(env), EPISODE_LAYOUT)
        env.close()
        return _finish(cfg, out, summarize(store))
    if out.exists():
        store = EpisodeStore.open(out, mode="a", flush_every=int(c.flush_every))
        recorded = env_config_dict(store.attrs.get("env_cfg") or {})  # older stores record no simulator: mujoco
        if recorded != collect_env_cfg or store.attrs.get("seed") != int(cfg.seed) or \
                any(store.attrs.get(k) != v for k, v in actor_attrs.items()) or \
                store.attrs.get("teacher_sha256") != teacher_sha:
            raise ConfigError(f"{out} was collected with another env config, seed, teacher or actor; resume with "
                              f"the same settings, or pass collect.out=NEW_PATH")
        print(f"[collect] resuming {out}: {store.num_episodes} episodes already committed")
    else:
        store = EpisodeStore.create(out, attrs, data_layout(env), EPISODE_LAYOUT, flush_every=int(c.flush_every))
    columns = [TextColumn("[bold]collect[/] {task.completed}/{task.total} kept"), BarColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns) as bar:
        task = bar.add_task("collect", total=target, completed=store.num_episodes, info="")

        def progress(s: EpisodeStore) -> None:
            bar.update(task, completed=s.num_episodes, info=f"rejected {s.num_rejected}")

        summary = collect(env, player, store, target, int(cfg.seed), filters, progress, label_with=labels)
    env.close()
    return _finish(cfg, out, summary)


def _dagger_actor(c, ckpt: dict, ckpt_path: Path, env):
    """``collect.actor``: (the acting student, the teacher's labeller, the store attrs naming both); without
    it (None, None, {}). The labels come from a PPO teacher (a function of the privileged state)."""
    if c.actor is None:
        return None, None, {}
    if ckpt.get("kind") != "ppo_mlp":
        raise ConfigError(f"collect.actor (DAgger) needs a PPO teacher to label the states, and {ckpt_path} is a "
                          f"{ckpt.get('kind')!r} checkpoint; pass collect.teacher_ckpt=PATH of stage=teacher "
                          f"teacher=ppo*")
    actor_path = Path(str(c.actor)).expanduser().resolve()
    if not actor_path.exists():
        raise ConfigError(f"collect.actor={actor_path} does not exist; pass the student.pt of a stage=bc run")
    actor_ckpt = load_checkpoint(actor_path, env.cfg.name)  # another env's: one line, exit 2
    actor = policy_from_checkpoint(actor_ckpt, env, path=actor_path)
    attrs = {"actor": actor_ckpt["kind"], "actor_sha256": file_sha256(actor_path),
             "actions": "the teacher's labels of the actor's states (DAgger), not the actions taken"}
    return actor, TeacherLabels(ckpt_path, ckpt, env), attrs


def _finish(cfg, out: Path, summary: dict) -> dict:
    from datasets.plots import make_plots

    plots = make_plots(EpisodeStore.open(out), run_dir(cfg) / "plots" / "dataset")
    print(f"[collect] dataset plots in {plots[0].parent}; inspect with: python -m datasets.inspect {out}")
    print(f"[collect] {summary['episodes']} episodes, {summary['steps']} steps in {out}; "
          f"with retries {summary['with_retry_share']:.0%}; rejected {summary['rejected']}")
    return {"dataset": str(out), **summary}
