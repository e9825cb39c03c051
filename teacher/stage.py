"""``python pipeline.py stage=teacher``: make (or, for ``teacher=scripted``, measure) the teacher.

Writes ``teacher.pt`` (self-describing: kind, env name and config, obs spec), ``teacher_eval.json``
and ``teacher_eval.md`` in the run directory.
"""

from __future__ import annotations

import json

import torch
from omegaconf import OmegaConf

from common.evaluate import evaluate, format_table
from common.metrics import MetricsLogger
from common.rundir import NotYetAvailable, output_path, run_dir
from envs import make_env
from envs.base import ConfigError
from envs.scripted import ScriptedExpert


def run(cfg) -> dict:
    kind = cfg.teacher.kind
    if kind == "ppo":
        raise NotYetAvailable("the PPO teacher (teacher=ppo) is still to come (issue #4); use teacher=scripted")
    if kind != "scripted":
        raise ConfigError(f"teacher.kind={kind!r}; choose ppo or scripted")
    ckpt_path = output_path(cfg, "teacher.pt")
    env = make_env(cfg.env)
    expert = ScriptedExpert.for_env(env)
    result = evaluate(env, expert.act, expert.reset, int(cfg.teacher.eval_episodes), seed=int(cfg.seed))
    result.update(policy_device="cpu", sim_device=str(env.device), env=env.cfg.name, teacher="scripted")
    env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
    torch.save({"kind": "scripted", "env_name": env.cfg.name, "env_cfg": env_cfg,
                "obs_spec": env.obs_spec.to_dict(), "eval": result}, ckpt_path)
    out = run_dir(cfg)
    (out / "teacher_eval.json").write_text(json.dumps(result, indent=2))
    table = format_table([result])
    (out / "teacher_eval.md").write_text(f"# Teacher ({env.cfg.name}, scripted)\n\n{table}")
    logger = MetricsLogger(out, "teacher", cfg.logger.mode, cfg.logger.project)
    logger.log({k: v for k, v in result.items() if isinstance(v, (int, float))})
    logger.close()
    env.close()
    print(f"teacher (scripted) on {env.cfg.name}:\n{table}")
    return {"teacher_ckpt": str(ckpt_path), **result}
