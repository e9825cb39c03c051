"""``python pipeline.py stage=finetune``: PPO fine-tuning of the behaviour-cloned student.

Input: ``finetune.init_ckpt`` (default ``<run_dir>/student.pt``, from stage=bc), on the task ``env=``
names; the demonstrations (``finetune.dataset``, default the dataset the student was trained on) feed
the imitation term and the demo-state resets.
Output: ``finetuned.pt``, a student checkpoint (rl/student/checkpoint.py: ``stage=eval`` and
collection read it like a ``student.pt``) whose ``state_dict`` holds the weights selected by
deterministic closed-loop success and ``last_state_dict`` the last ones, plus a ``finetune`` record
(start, selection history, settings); ``finetune_state.pt``, the runner's own checkpoint
(``finetune.resume=true`` continues from it exactly); ``finetune_eval.json``/``.md``;
``metrics.jsonl`` (stage ``finetune``) and ``plots/finetune_*.png`` (training curves, per-layer gradients,
and every ``finetune.diag_every`` iterations the student's internals: ``finetune_internals.png``).

How (DESIGN.md, "Fine-tuning"): the student is PPO's actor, the rollout stores sequences of
``seq_len`` steps with the memory each starts from (rl/recurrent_storage.py), and the update
recomputes them from that memory, so the first epoch of an unchanged student has ratio 1. A fresh
critic first learns alone for ``critic_warmup_iterations`` on the frozen student's rollouts, then the
student moves from ``actor_learning_rate`` under the adaptive KL schedule. An imitation term stays in
every update (the teacher's lesson: PPO erodes an imitation start without it): the PPO teacher's actions
at the student's own rollout states (``finetune.imitation=teacher``, DAgger; finetune/teacher_labels.py),
or the demonstrations' raw actions (``demos``, DAPG); ``auto`` takes the teacher where the run has a PPO
one. The std stays the student's free log-std; actions are raw until the env clips them.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from common.evaluate import (
    device_note,
    evaluate_policy,
    evaluation_env_config,
    evaluation_seed,
    finetune_confirm_seed,
    finetune_selection_seed,
    format_table,
)
from common.metrics import MetricsLogger, dumps_json
from common.policies import check_obs_spec, policy_from_checkpoint
from common.rundir import code_version, output_path, run_dir
from common.selection import BestCheckpoint
from envs import env_config_with, make_env
from envs.base import ConfigError
from finetune.teacher_labels import teacher_labels
from rl.ppo import PPOConfig
from rl.runner import OnPolicyRunner, RunnerConfig
from rl.student.checkpoint import load_student
from rl.student.diagnostics import RolloutDiagnostics
from rl.student_actor_critic import StudentActorCritic

STATE_NAME = "finetune_state.pt"


def run(cfg) -> dict:
    f = cfg.finetune
    out = run_dir(cfg)
    init_path = Path(str(f.init_ckpt)).expanduser().resolve() if f.init_ckpt else out / "student.pt"
    if not init_path.exists():
        raise ConfigError(f"{init_path} does not exist; run stage=bc first with the same run_dir, or pass "
                          f"finetune.init_ckpt=PATH to a student.pt")
    env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
    student, info = load_student(init_path, env_name=env_cfg["name"])  # another env's student: exit 2
    state_path = out / STATE_NAME
    resume = bool(f.resume) and state_path.exists()
    final_path = out / "finetuned.pt" if resume else output_path(cfg, "finetuned.pt")
    if not resume:
        output_path(cfg, STATE_NAME)  # refuse to replace another run's state (overwrite=true replaces it)

    if f.init_std is not None:
        # BC's std is the demonstrations' spread around its mean (1.15 on PickLoose, in raw action units):
        # sampled at that width the student succeeded 10% of the time against 63% deterministically, so
        # PPO would learn about another policy than the deployed one. A fresh start for the free
        # log-std (as the teacher's warm start does), never a bound on it.
        with torch.no_grad():
            student.head.log_std.fill_(float(f.init_std)).log_()
    train_env_cfg = env_config_with(cfg.env, f.train_perturbations, num_envs=int(f.num_envs))
    env = make_env(train_env_cfg)
    check_obs_spec(info, env, [student.cfg.group], init_path)
    torch.manual_seed(int(cfg.seed))
    policy = StudentActorCritic(student, env.obs_spec.dim("privileged"), critic_hidden=list(f.critic_hidden),
                                critic=str(f.critic), value_grad_to_trunk=bool(f.value_grad_to_trunk))
    teacher = teacher_labels(f, out, env)  # None: no PPO teacher labels the rollouts (finetune.imitation)
    ppo_cfg, imitation = _ppo_config(f, teacher)
    dataset = _dataset_path(f, info, ppo_cfg.bc_coef)
    selector = _selector(cfg, env_cfg)
    meta = {"kind": "finetune_state", "env_name": env.cfg.name, "env_cfg": env_cfg,
            "obs_spec": env.obs_spec.to_dict(), "init_ckpt": str(init_path), "train_env_cfg": train_env_cfg}
    group = str(f.advantage) == "group"
    steps, warmup = int(f.steps_per_env), int(f.critic_warmup_iterations)
    if group:
        # a group's envs start together and each plays one whole episode: the rollout spans the longest
        # episode (rounded up to whole sequences), and there is no critic to warm up
        L = int(f.seq_len)
        steps, warmup = -(-int(env.max_episode_length) // L) * L, 0
        print(f"[finetune] advantage=group: groups of {f.group_size} envs, rollouts of {steps} steps, no critic")
    resets = _demo_resets(f, dataset, env, int(cfg.seed))
    runner_cfg = RunnerConfig(num_steps_per_env=steps, num_iterations=int(f.iterations), seed=int(cfg.seed),
                              save_every=int(f.save_every), critic_warmup_iterations=warmup,
                              actor_start_learning_rate=float(f.actor_learning_rate), seq_len=int(f.seq_len),
                              advantage=str(f.advantage), group_size=int(f.group_size))
    state = None
    if resume:  # checked before the logger or the runner writes anything
        state = torch.load(state_path, weights_only=True)
        _check_resume(state_path, state, {**meta, "policy_cfg": policy.config_dict(), "ppo_cfg": asdict(ppo_cfg),
                                          "runner_cfg": asdict(runner_cfg)})
    logger = MetricsLogger(out, "finetune", cfg.logger.mode, cfg.logger.project,
                           config=OmegaConf.to_container(cfg, resolve=True))
    runner = OnPolicyRunner(
        env, policy, ppo_cfg, runner_cfg, logger=logger, checkpoint_meta=meta, selector=selector,
        on_reset=resets if resets is not None and not group else None,
        group_start=resets.start_groups if resets is not None and group else None,
        diagnostics=RolloutDiagnostics(int(f.diag_every)), teacher=teacher)
    _attach_imitation(runner, f, dataset, student)
    if state is not None:
        runner.load(state)
        print(f"[finetune] resuming {state_path} at iteration {runner.iteration}")
        if runner.iteration >= int(f.iterations):  # a stopped run's export: its candidates so far, nothing trained
            print(f"[finetune] finetune.iterations={f.iterations} <= the state's {runner.iteration}: no more training; "
                  f"delivering the best weights selected so far")
    term = {"teacher": f"the teacher's labels (teacher_coef {ppo_cfg.teacher_coef}, {getattr(teacher, 'path', '')})",
            "demos": f"the demonstrations (bc_coef {ppo_cfg.bc_coef})", "off": "none"}[imitation]
    total = max(int(f.iterations), runner.iteration)  # a stopped run's export trains none: its state's count
    print(f"[finetune] {info['model_kind']} student from {init_path} on {env.cfg.name}: {total} iterations "
          f"of {f.num_envs} envs x {steps} steps, advantage {f.advantage}, critic {f.critic}, warm-up {warmup}, "
          f"imitation={f.imitation}: {term}, demo resets {f.demo_reset_prob}")
    last = runner.learn(checkpoint_path=state_path, progress=bool(f.progress))
    _confirm(cfg, selector, policy)
    logger.close()
    env.close()
    from rl.plot import load, plot

    plots = plot(load(out / "metrics.jsonl", "finetune"), out / "plots", "finetune")
    ckpt = _finetuned_checkpoint(cfg, init_path, info, policy, runner, selector, dataset, teacher, imitation)
    result = _evaluate(cfg, ckpt)
    ckpt["eval"] = result
    torch.save(ckpt, final_path)
    _report(cfg, result, ckpt["finetune"])
    print(f"[finetune] wrote {final_path}; plots: {', '.join(p.name for p in plots)}")
    return {"finetuned_ckpt": str(final_path), "train_success_rate": last.get("success_rate"),
            "env_steps": last.get("env_steps"), **ckpt["finetune"]["selected"], **result}


def _check_resume(path: Path, state: dict, now: dict) -> None:
    """One ConfigError if ``finetune_state.pt`` was made with other settings than ``now`` (a changed env, num_envs,
    critic or PPO setting made runner.load fail with a traceback); only the iteration budget may change."""
    if not isinstance(state, dict) or state.get("kind") != "finetune_state":
        raise ConfigError(f"{path} is not a fine-tuning state; set finetune.resume=false (and overwrite=true)")
    differ = [k for k in ("train_env_cfg", "init_ckpt", "policy_cfg", "ppo_cfg") if k in state and state[k] != now[k]]
    differ += [f"runner.{k}" for k, v in state["runner_cfg"].items()
               if k not in ("num_iterations", "save_every") and v != now["runner_cfg"].get(k)]
    if differ:
        raise ConfigError(f"finetune.resume: {path} was made with other settings ({', '.join(differ)}); resume with "
                          f"the settings it was trained with, or set finetune.resume=false with a new run_dir")


def _dataset_path(f, info: dict, bc_coef: float) -> Path | None:
    """The demonstrations: ``finetune.dataset``, else the one the student was trained on (None if unused)."""
    needed = bc_coef > 0 or float(f.demo_reset_prob) > 0
    if not needed:
        return None
    path = Path(str(f.dataset)).expanduser().resolve() if f.dataset else Path(info["dataset"]["path"])
    if not path.exists():
        raise ConfigError(f"the demonstrations {path} do not exist (the imitation term and demo-state resets read "
                          f"them); pass finetune.dataset=PATH, or set finetune.imitation=teacher|off and "
                          f"finetune.demo_reset_prob=0")
    return path


def _ppo_config(f, teacher) -> tuple[PPOConfig, str]:
    """finetune.ppo with the imitation term finetune.imitation chose, and its name: the teacher's labels
    (``teacher``: a PPO teacher was found), the demonstrations' windows (``demos``, or ``auto`` without a PPO
    teacher), or none (``off``)."""
    source = "teacher" if teacher is not None else ("off" if str(f.imitation) == "off" else "demos")
    ppo = OmegaConf.to_container(f.ppo, resolve=True)
    ppo["bc_coef"] = float(ppo["bc_coef"]) if source == "demos" else 0.0
    ppo["teacher_coef"] = float(ppo["teacher_coef"]) if source == "teacher" else 0.0
    return PPOConfig(**ppo), source


def _attach_imitation(runner: OnPolicyRunner, f, dataset: Path | None, student) -> None:
    """The imitation term's demonstrated sequences (its bc_coef > 0)."""
    if dataset is None or runner.ppo.cfg.bc_coef <= 0:
        return
    from datasets.arrays import read_policy_arrays
    from datasets.store import EpisodeStore
    from rl.demo_sequences import DemoSequences

    store = EpisodeStore.open(dataset)
    arrays = read_policy_arrays(store, student.spec, student.cfg.group)
    runner.ppo.set_demonstration_sequences(
        DemoSequences(arrays, student.cfg.group, int(f.seq_len), burn_in=int(f.imitation_burn_in)))


def _demo_resets(f, dataset: Path | None, env, seed: int):
    """Resets to demonstration states (finetune.demo_reset_prob > 0), or None."""
    if dataset is None or float(f.demo_reset_prob) <= 0:
        return None
    from finetune.demo_reset import DemoStateResets, load_demo_states

    return DemoStateResets(load_demo_states(dataset, env), float(f.demo_reset_prob), seed + 307, env.num_envs)


def _selector(cfg, env_cfg: dict) -> BestCheckpoint | None:
    s = cfg.finetune.select
    if int(s.every) <= 0:
        return None
    n = int(s.episodes)
    # the env as evaluated (no training perturbations), on seeds apart from the final evaluation's
    return BestCheckpoint(lambda: make_env(evaluation_env_config(cfg, n)), int(s.every), n, int(cfg.seed),
                          actor=lambda p: p.student, seed_fn=finetune_selection_seed, keep=int(s.confirm_top))


def _confirm(cfg, selector: BestCheckpoint | None, policy: StudentActorCritic) -> None:
    """Replay the selection's best candidates on fresh episodes and keep the one with the most successes over
    both sets (finetune.select.confirm_top, confirm_episodes): the best of many near-equal candidates on one
    set of episodes is overrated (common/selection.py). One candidate (confirm_top 0 or 1) or no episodes: nothing."""
    s = cfg.finetune.select
    if selector is None:
        return
    rows = selector.confirm(policy, int(s.confirm_episodes), finetune_confirm_seed(int(cfg.seed)))
    for r in rows:
        print(f"[finetune] candidate iteration {r['iteration']}: {r['success_rate']:.1%} on the selection's "
              f"{selector.episodes} episodes, {r['confirm_success_rate']:.1%} on {s.confirm_episodes} fresh ones, "
              f"{r['success_rate_both']:.1%} over both" + ("  <- kept" if r["iteration"] == selector.best["iteration"]
                                                            else ""))


def _student_state(policy: StudentActorCritic) -> dict:
    return {k: v.detach().cpu().clone() for k, v in policy.student.state_dict().items()}


def _finetuned_checkpoint(cfg, init_path: Path, info: dict, policy: StudentActorCritic, runner: OnPolicyRunner,
                          selector: BestCheckpoint | None, dataset: Path | None, teacher=None,
                          imitation: str = "demos") -> dict:
    """A student checkpoint of the selected (``state_dict``) and last (``last_state_dict``) weights."""
    last = _student_state(policy)
    selected = {"iteration": runner.iteration, "success_rate": None}
    chosen = last
    if selector is not None:
        selector.close()
        if selector.best is not None:
            prefix = "student."
            chosen = {k[len(prefix):]: v.clone() for k, v in selector.best["model"].items() if k.startswith(prefix)}
            selected = {"iteration": selector.best["iteration"], "success_rate": selector.best["success_rate"]}
            confirmed = [r for r in selector.confirmation if r["iteration"] == selector.best["iteration"]]
            selected["confirm_success_rate"] = confirmed[0]["confirm_success_rate"] if confirmed else None
    history = [{"iteration": int(i), "success_rate": float(r)} for i, r in (selector.history if selector else [])]
    start = history[0]["success_rate"] if history and history[0]["iteration"] == 0 else None
    keep = {k: v for k, v in info.items() if k not in ("selected", "selection", "eval", "finetune")}
    return {**keep, "state_dict": chosen, "last_state_dict": last,
            "selected": {"iteration": selected["iteration"], "success_rate": selected["success_rate"],
                         "episodes": int(cfg.finetune.select.episodes)},
            "finetune": {"init_ckpt": str(init_path), "bc_selected": info.get("selected"),
                         "selected": {"selected_iteration": selected["iteration"],
                                      "selection_success_rate": selected["success_rate"],
                                      "confirm_success_rate": selected.get("confirm_success_rate"),
                                      "start_selection_success_rate": start},
                         "selection": history, "iterations": runner.iteration,
                         "confirmation": list(selector.confirmation) if selector else [],
                         "dataset": str(dataset) if dataset else None,
                         "imitation": imitation,
                         "teacher": str(teacher.path) if teacher is not None else None,
                         "cfg": OmegaConf.to_container(cfg.finetune, resolve=True),
                         "critic": policy.config_dict().get("critic", cfg.finetune.critic)},
            "seed": int(cfg.seed), "code_version": code_version()}


def _evaluate(cfg, ckpt: dict) -> dict:
    """The selected weights' deterministic success on the final evaluation's seeds, built by the same
    loader stage=eval uses for this checkpoint (common/policies.py), so its table reproduces this one."""
    n = int(cfg.finetune.eval_episodes)
    env = make_env(evaluation_env_config(cfg, n))
    result = evaluate_policy(env, policy_from_checkpoint(ckpt, env), n, evaluation_seed(cfg.seed))
    env.close()
    result.update(env=env.cfg.name, policy="finetuned")
    return result


def _report(cfg, result: dict, record: dict) -> None:
    out = run_dir(cfg)
    (out / "finetune_eval.json").write_text(dumps_json({**result, "finetune": record}))
    table = format_table([result])
    start = record["selected"]["start_selection_success_rate"]
    sel = record["selected"]
    line = (f"selected iteration {sel['selected_iteration']} (selection success {sel['selection_success_rate']:.1%}"
            + (f"; the BC start {start:.1%} on the same selection episodes" if start is not None else "")
            + (f"; {sel['confirm_success_rate']:.1%} on the confirmation's fresh episodes, the best of "
               f"{len(record['confirmation'])} candidates over both" if sel.get("confirm_success_rate") is not None
               else "") + ")"
            if sel["selection_success_rate"] is not None
            else "no selection (finetune.select.every=0): the last weights")
    (out / "finetune_eval.md").write_text(f"# Fine-tuned student ({result['env']})\n\n{line}\n\n{table}\n"
                                          f"{device_note()}\n")
    print(f"[finetune] {line}\n{table}{device_note()}")
