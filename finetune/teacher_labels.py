"""Which teacher labels fine-tuning's rollouts (``finetune.imitation=teacher|auto``, the weight
``finetune.ppo.teacher_coef``): PPO's teacher term pulls the student's mean towards the PPO teacher's label
of each rollout state (DAgger inside the update, as teacher-student RL does: RMA, "Learning by Cheating").
The labeller, and why a scripted teacher is refused: common/teacher_labels.py.
"""

from __future__ import annotations

from pathlib import Path

from common.policies import load_checkpoint
from common.teacher_labels import TeacherLabels
from envs.base import ConfigError


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
