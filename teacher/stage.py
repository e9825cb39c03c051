"""``python pipeline.py stage=teacher``: train the PPO teacher, or measure the scripted one.

Writes ``teacher.pt`` (self-describing: kind, env name and config, obs spec, policy config and
weights for PPO), ``teacher_eval.json`` and ``teacher_eval.md`` in the run directory, and the
training curves to ``metrics.jsonl`` (plot them with ``python -m rl.plot RUN_DIR``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from common.evaluate import device_note, evaluate_policy, evaluation_env_config, evaluation_seed, format_table
from common.metrics import MetricsLogger, dumps_json
from common.policies import PolicyTeacher, ScriptedPolicy, load_checkpoint
from common.rundir import output_path, run_dir
from common.selection import BestCheckpoint
from envs import env_config_dict, env_config_with, make_env
from envs.base import ConfigError
from rl.ppo import PPOConfig
from rl.runner import OnPolicyRunner, RunnerConfig
from teacher.curriculum import ReverseCurriculum, expert_state_pool
from teacher.ppo_teacher import behaviour_clone, build_policy, expert_pairs


def run(cfg) -> dict:
    kind = cfg.teacher.kind
    if kind == "scripted":
        return _run_scripted(cfg)
    if kind == "ppo":
        return _run_ppo(cfg)
    raise ConfigError(f"teacher.kind={kind!r}; choose ppo or scripted")


def _report(cfg, result: dict, label: str) -> str:
    out = run_dir(cfg)
    (out / "teacher_eval.json").write_text(dumps_json(result))
    table = format_table([result])
    (out / "teacher_eval.md").write_text(f"# Teacher ({result['env']}, {label})\n\n{table}\n{device_note()}\n")
    print(f"teacher ({label}) on {result['env']}:\n{table}{device_note()}")
    return table


def _run_scripted(cfg) -> dict:
    ckpt_path = output_path(cfg, "teacher.pt")
    n = int(cfg.teacher.eval_episodes)
    env = make_env(evaluation_env_config(cfg, n))
    result = evaluate_policy(env, ScriptedPolicy(env), n, evaluation_seed(cfg.seed))
    result.update(env=env.cfg.name, teacher="scripted")
    torch.save({"kind": "scripted", "env_name": env.cfg.name, "env_cfg": env_config_dict(cfg.env),
                "obs_spec": env.obs_spec.to_dict(), "eval": result}, ckpt_path)
    logger = MetricsLogger(run_dir(cfg), "teacher", cfg.logger.mode, cfg.logger.project)
    logger.log({k: v for k, v in result.items() if isinstance(v, (int, float))})
    logger.close()
    env.close()
    _report(cfg, result, "scripted")
    return {"teacher_ckpt": str(ckpt_path), **result}


def _run_ppo(cfg) -> dict:
    t = cfg.teacher
    path = run_dir(cfg) / "teacher.pt"
    resume = bool(t.resume) and path.exists()
    if not resume:
        path = output_path(cfg, "teacher.pt")
    env_cfg = env_config_dict(cfg.env)
    train_cfg = env_config_with(env_cfg, t.train_perturbations, num_envs=int(t.num_envs))
    env = make_env(train_cfg)
    torch.manual_seed(int(cfg.seed))
    policy = build_policy(env, t)
    on_reset = _curriculum(t.curriculum, env, int(cfg.seed))
    logger = MetricsLogger(run_dir(cfg), "teacher", cfg.logger.mode, cfg.logger.project,
                           config=OmegaConf.to_container(cfg, resolve=True))
    meta = {"kind": "ppo_mlp", "env_name": env.cfg.name, "env_cfg": env_cfg, "obs_spec": env.obs_spec.to_dict()}
    every = int(t.select.every)
    n_select = int(t.select.episodes)
    selector = BestCheckpoint(lambda: make_env({**env_cfg, "num_envs": min(n_select, 64)}), every, n_select,
                              int(cfg.seed)) if every > 0 else None
    runner = OnPolicyRunner(env, policy, PPOConfig(**OmegaConf.to_container(t.ppo)),
                            RunnerConfig(num_steps_per_env=int(t.steps_per_env), num_iterations=int(t.iterations),
                                         seed=int(cfg.seed), save_every=int(t.save_every),
                                         critic_warmup_iterations=int(t.warm_start.critic_warmup_iterations)
                                         if t.warm_start.enabled else 0,
                                         actor_start_learning_rate=float(t.warm_start.ppo_learning_rate)
                                         if t.warm_start.enabled else None),
                            logger=logger, on_reset=on_reset, checkpoint_meta=meta, selector=selector)
    if resume:
        if t.warm_start.enabled and float(t.ppo.bc_coef) > 0:
            # the imitation term's expert pairs are not in the checkpoint; they are deterministic, so
            # rebuild them (before load: it restores the env state that this rollout changes)
            runner.ppo.set_demonstrations(*_expert_demonstrations(env, cfg))
        runner.load(load_checkpoint(path, env.cfg.name))
        print(f"[teacher] resuming {path} at iteration {runner.iteration}")
    elif t.warm_start.enabled:
        w = t.warm_start
        obs, actions = _expert_demonstrations(env, cfg)
        bc = behaviour_clone(policy, obs, actions, int(w.bc_steps), int(w.batch_size), float(w.learning_rate),
                             int(cfg.seed))
        logger.log(bc)
        print(f"[teacher] warm start: imitated {bc['bc_samples']} expert steps, "
              f"MSE {bc['bc_loss_first']:.3f} -> {bc['bc_loss_last']:.3f}")
        runner.ppo.set_demonstrations(obs, actions)  # used when teacher.ppo.bc_coef > 0
        if w.freeze_normalizer:
            policy.freeze_actor_normalizer()
    last = runner.learn(checkpoint_path=Path(path))
    logger.close()
    env.close()
    from rl.plot import load, plot

    plots = plot(load(run_dir(cfg) / "metrics.jsonl", "teacher"), run_dir(cfg) / "plots", "teacher")
    print(f"[teacher] training curves: {', '.join(str(p) for p in plots)}")
    ckpt = torch.load(path, weights_only=True)
    extra = _deliver_selected(cfg, selector, runner.iteration, policy, ckpt) if selector else {}
    result = {**evaluate_ppo_teacher(cfg, policy), **extra}
    ckpt["eval"] = result
    torch.save(ckpt, path)
    _report(cfg, result, "ppo")
    return {"teacher_ckpt": str(path), "train_success_rate": last.get("success_rate"),
            "env_steps": last.get("env_steps"), **result}


def _deliver_selected(cfg, selector: BestCheckpoint, last_iteration: int, policy, ckpt: dict) -> dict:
    """Load the selected weights into ``policy`` and into ``ckpt["selected"]`` (what PolicyTeacher acts
    with; ``ckpt["model"]`` stays the last weights, which a resume continues from). Returns the
    selection's numbers for the evaluation summary, with the last weights' success if they differ."""
    selector.close()
    best = selector.best
    if best is None:  # a resumed run that had no iteration left to evaluate
        return {}
    extra = {}
    if best["iteration"] != last_iteration:
        extra["last_iteration_success_rate"] = evaluate_ppo_teacher(cfg, policy)["success_rate"]
        policy.load_state_dict(best["model"])
    extra.update(selected_iteration=best["iteration"], selection_success_rate=best["success_rate"])
    ckpt["selected"] = {"iteration": best["iteration"], "success_rate": best["success_rate"], "model": best["model"]}
    print(f"[teacher] selected the weights of iteration {best['iteration']} (success {best['success_rate']:.1%} "
          f"on {selector.episodes} selection episodes, seeded apart from the evaluation below)"
          + (f"; the last iteration's weights: {extra['last_iteration_success_rate']:.1%} in the evaluation"
             if "last_iteration_success_rate" in extra else ""))
    return extra


def _expert_demonstrations(env, cfg):
    """The warm start's expert pairs; a resumed run rebuilds the same ones from the same seed."""
    return expert_pairs(env, int(cfg.seed) + 211, int(cfg.teacher.warm_start.expert_steps))


def _curriculum(c, env, seed: int) -> ReverseCurriculum | None:
    share = float(c.expert_state_share)
    if share <= 0:
        return None
    pool = expert_state_pool(env, seed + int(c.pool_seed_offset), int(c.pool_rounds))
    if len(pool) == 0:
        raise ConfigError(f"the scripted expert succeeded in none of its {c.pool_rounds * env.num_envs} episodes on "
                          f"{env.cfg.name}, so there are no states to start from; set "
                          f"teacher.curriculum.expert_state_share=0")
    print(f"[teacher] curriculum: {len(pool)} expert states, up to {int(pool.steps_to_go.max())} steps to go, "
          f"{'adaptive' if c.adaptive else 'uniform'} starts for {share:.0%} of resets")
    return ReverseCurriculum(pool, share, seed, env.num_envs, adaptive=bool(c.adaptive), start=int(c.start),
                             band=int(c.band), advance=int(c.advance), advance_at=float(c.advance_at),
                             min_episodes=int(c.min_episodes), budget_factor=float(c.budget_factor),
                             budget_extra=int(c.budget_extra))


def evaluate_ppo_teacher(cfg, policy) -> dict:
    """Deterministic (mean) actions on the env as configured, without the training perturbations:
    the evaluation that ``stage=eval`` of the delivered teacher.pt repeats."""
    n = int(cfg.teacher.eval_episodes)
    env = make_env(evaluation_env_config(cfg, n))
    result = evaluate_policy(env, PolicyTeacher(policy=policy), n, evaluation_seed(cfg.seed))
    env.close()
    result.update(env=env.cfg.name, teacher="ppo")
    return result
