"""The privileged teacher as a labeller of the student's own states (``finetune.imitation=teacher``, the
weight ``finetune.ppo.teacher_coef``).

Behaviour cloning learns the teacher's actions at the teacher's states; closed loop, the student drifts to
states the demonstrations never showed (covariate shift) and has no label there. During fine-tuning every
rollout is the student's own, and the PPO teacher, a memoryless MLP on the ``privileged`` group, can say
what it would do at each of those states: PPO's teacher term pulls the student's mean towards it (DAgger,
Ross et al. 2011, inside the update, as teacher-student RL does: RMA, "Learning by Cheating"). The teacher
sees hidden properties only in the ``revealed`` view, once the gripper has tried a cube, so its label at a
state is what the student could also know from its history.

A scripted teacher is refused: its actions depend on its own timers and on its memory of the episode, not
on the state alone, and its labels off its own trajectories are nonsense (a DAgger probe with it took a
56% teacher to 0-2%, README Known issues).
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.policies import PolicyTeacher, check_obs_spec, load_checkpoint
from envs.base import ConfigError


class TeacherLabels:
    """``labels(obs) -> (M, A)``: the teacher's deterministic raw action (its mean, never clipped) for obs
    groups of (M, D); ``groups``: the groups it reads (the runner stores them with the rollout)."""

    def __init__(self, path: Path, ckpt: dict, env):
        """``ckpt``: the PPO teacher's checkpoint as ``load_checkpoint(path, ...)`` read it (kind ``ppo_mlp``)."""
        actor_obs = ckpt["policy_cfg"]["actor_obs"]
        check_obs_spec(ckpt, env, [actor_obs], path)
        self.path, self.groups = Path(path), (actor_obs,)
        self.net = PolicyTeacher(ckpt).net  # the selected weights, as collection acts with them; eval mode

    @torch.no_grad()
    def __call__(self, obs: dict) -> torch.Tensor:
        action, _ = self.net.act_inference({g: obs[g] for g in self.groups})
        return action


def teacher_labels(f, out: Path, env) -> TeacherLabels | None:
    """The labeller ``finetune.imitation`` asks for, or None. ``teacher``: ``finetune.teacher_ckpt`` (default the
    run directory's ``teacher.pt``) must be a PPO teacher, else one line (exit 2). ``auto``: the same when
    ``teacher_ckpt`` is given; otherwise the run directory's ``teacher.pt`` if it is a PPO teacher, else None (the
    demonstrations' term takes over: a scripted teacher's run, or a student fine-tuned outside its run)."""
    mode = str(f.imitation)
    if mode not in ("auto", "teacher"):
        return None
    explicit = f.teacher_ckpt is not None
    strict = explicit or mode == "teacher"  # a teacher asked for: its absence or kind is an error, not a fallback
    path = Path(str(f.teacher_ckpt)).expanduser().resolve() if explicit else out / "teacher.pt"
    if not path.exists():
        if not strict:
            return None
        raise ConfigError(f"finetune.imitation={mode} needs the PPO teacher, and {path} does not exist; pass "
                          f"finetune.teacher_ckpt=PATH, or set finetune.imitation=demos")
    ckpt = load_checkpoint(path, env.cfg.name)  # another env's teacher: one line, exit 2
    if ckpt.get("kind") != "ppo_mlp":
        if not strict:
            return None
        raise ConfigError(f"finetune.teacher_ckpt={path} is a {ckpt.get('kind')!r} checkpoint; the teacher term "
                          f"needs a PPO teacher (a function of the privileged state: teacher.pt of "
                          f"stage=teacher teacher=ppo*), or set finetune.imitation=demos")
    return TeacherLabels(path, ckpt, env)
