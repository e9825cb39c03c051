"""The privileged PPO teacher as a labeller of states it did not visit: what it would do at each.

Behaviour cloning learns the teacher's actions at the teacher's states; closed loop, the student drifts to
states the demonstrations never showed (covariate shift) and has no label there. The teacher, a
memoryless MLP on the ``privileged`` group, can label any state: DAgger (Ross et al. 2011). Fine-tuning's
teacher term labels the student's rollouts with it (finetune/teacher_labels.py), DAgger collection the
student's episodes (``collect.actor``, collect/stage.py). The teacher sees hidden properties only in the
``revealed`` view, once the gripper has tried a cube, so its label at a state is what the student could
also know from its history.

A scripted teacher cannot label: its actions depend on its own timers and on its memory of the episode,
not on the state alone, and its labels off its own trajectories are nonsense (a DAgger probe with it took
a 56% teacher to 0-2%, README Known issues).
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.policies import PolicyTeacher, check_obs_spec


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
