"""``student.pt``: the self-describing student checkpoint and its loader (common/policies.py acts with it).

Format (a plain dict; ``torch.load(path, weights_only=True)`` reads it)::

    kind            "student"
    model_kind      transformer | mlp | rnn
    model_config    model.config_dict(): {"kind", "spec" (the policy group's obs spec), "cfg"}
    state_dict      the selected weights (best closed-loop success; ties: the earliest), normaliser inside
    last_state_dict the last weights
    selected        {"epoch", "success_rate", ...}: which weights ``state_dict`` holds
    selection       [{"epoch", "step", "success_rate", "mean_reward", "mean_episode_length", ...}] every evaluation
    env_name, env_cfg, obs_spec (every group of the env the dataset was collected on)
    dataset         {"path", "hash" (sha256 of episode_ends and attrs), "episodes", "code_version" (the
                    collecting code's), "train_episodes", "val_episodes"}
    bc_cfg, seed, code_version (the training code's)

Behaviour cloning (bc/), fine-tuning (finetune/) and evaluation (evaluation/) all read it through
``load_student``; evaluation must not import bc/, so this lives in rl/student/.
"""

from __future__ import annotations

from pathlib import Path

import torch

from envs.base import ConfigError
from rl.student.model import student_from_config

STUDENT_KIND = "student"


def load_student(path_or_ckpt: str | Path | dict, env_name: str | None = None, weights: str = "selected",
                 model_kind: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild the student of a ``student.pt`` (a path or its loaded dict) in eval mode.

    ``env_name``: refuse a checkpoint trained for another env; ``model_kind``: refuse another model
    kind; ``weights``: ``selected`` (default) or ``last``. Returns (model, info): info is the
    checkpoint without its state dicts. Every mismatch is one ConfigError line naming the fix."""
    if isinstance(path_or_ckpt, dict):
        ckpt, where = path_or_ckpt, "the checkpoint"
    else:
        path = Path(path_or_ckpt).expanduser()
        if not path.exists():
            raise ConfigError(f"student checkpoint {path} does not exist; run stage=bc first or pass the right path")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"{path} is not a readable checkpoint ({type(exc).__name__}); "
                              f"train it again with stage=bc") from exc
        where = str(path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != STUDENT_KIND:
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError(f"{where} is a {kind!r} checkpoint, not a student; pass a student.pt from stage=bc")
    if env_name is not None and ckpt["env_name"] != env_name:
        raise ConfigError(f"{where} was trained on {ckpt['env_name']}, not {env_name}; pass env=... of that "
                          f"task or a checkpoint trained for {env_name}")
    if model_kind is not None and ckpt["model_kind"] != model_kind:
        raise ConfigError(f"{where} holds a {ckpt['model_kind']} student, not {model_kind}; pass "
                          f"bc.model={ckpt['model_kind']} or another checkpoint")
    if weights not in ("selected", "last"):
        raise ConfigError(f"weights={weights!r}; choose selected or last")
    model = student_from_config(ckpt["model_config"])
    state = ckpt["state_dict"] if weights == "selected" else ckpt["last_state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{where}: the weights do not fit the model its config describes ({first}); "
                          f"train it again with stage=bc") from exc
    model.eval()
    return model, {k: v for k, v in ckpt.items() if k not in ("state_dict", "last_state_dict")}
