"""Every checkpoint of ours behind one policy interface: what evaluation and collection act with.

A checkpoint is a dict written with ``torch.save`` and read with ``weights_only=True``. It names its
``kind``, the ``env_name`` it was made for (and its ``env_cfg`` and ``obs_spec``), and carries what
its kind needs. ``load_policy(path, env, device)`` reads it, checks it was made for ``env``, and
builds the policy with the loader registered for its kind. A new kind is one function::

    @register("my_kind")
    def _my_kind(ckpt: dict, env, device: torch.device) -> Policy:
        check_obs_spec(ckpt, env, ["policy"])       # the observation layout it was trained on
        model = build_from(ckpt)                    # a network of rl/ (see ``_student`` below)
        return NetworkPolicy(model, device, kind="my_kind")  # memory carried and reset per episode

Loaders must not import a stage package (teacher/, bc/, ...): the model they build lives in rl/ or
common/, so that evaluation/ can load every kind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from envs.base import ConfigError
from envs.scripted import ScriptedExpert
from rl.networks import MLPActorCritic, MLPPolicyConfig


class Policy:
    """The interface: ``act(obs) -> (N, A)`` raw actions from a dict of observation groups (on the
    env's device; the policy moves them to its own), ``reset(done)`` with the (N,) bool mask of envs
    that start a new episode (all of them first), ``kind`` (the checkpoint's), ``device``, and
    ``devices``: the devices it can run on at all."""

    kind = ""
    devices: tuple[str, ...] = ("cpu", "cuda")

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def act(self, obs: dict) -> torch.Tensor:
        raise NotImplementedError

    def reset(self, done: torch.Tensor) -> None:
        pass


LOADERS: dict[str, Callable[[dict, object, torch.device], Policy]] = {}


def register(kind: str):
    """Decorator: the loader for checkpoints whose ``kind`` is ``kind``."""

    def add(fn):
        LOADERS[kind] = fn
        return fn

    return add


def load_checkpoint(path, env_name: str) -> dict:
    """Read a checkpoint of ours (weights only) and check it was made for ``env_name``."""
    path = Path(path)
    try:
        ckpt = torch.load(path, weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path} is not a readable checkpoint ({type(exc).__name__}); re-run the stage that "
                          f"made it or point to another file") from exc
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise ConfigError(f"{path} is not a checkpoint of this project (no 'kind'); re-run the stage that made it")
    if ckpt.get("env_name") != env_name:
        raise ConfigError(f"{path} was made for {ckpt.get('env_name')}, but this run uses {env_name}; "
                          f"pass env=... to match or train a policy for {env_name}")
    return ckpt


def policy_from_checkpoint(ckpt: dict, env, device: str | torch.device = "cpu", path="the checkpoint") -> Policy:
    """Build the policy of a loaded checkpoint for ``env`` with its kind's loader."""
    kind = ckpt.get("kind")
    if kind not in LOADERS:
        raise ConfigError(f"{path} has kind {kind!r}, which no policy loader knows (known: {', '.join(LOADERS)}); "
                          f"re-make it with the stage of this version, or register its loader in common/policies.py")
    device = torch.device(device)
    policy = LOADERS[kind](ckpt, env, device)
    if device.type not in policy.devices:
        raise ConfigError(f"a {kind} policy runs on {', '.join(policy.devices)} only, not on {device}")
    return policy


def load_policy(path, env, device: str | torch.device = "cpu") -> Policy:
    """``policy_from_checkpoint(load_checkpoint(path, env.cfg.name), env, device)``."""
    return policy_from_checkpoint(load_checkpoint(path, env.cfg.name), env, device, path)


def check_obs_spec(ckpt: dict, env, groups: list[str], path="the checkpoint") -> None:
    """Refuse a checkpoint whose observation layout of ``groups`` differs from ``env``'s (another
    cube count or set of observation terms: the network's inputs would mean other things)."""
    if "obs_spec" not in ckpt:
        return
    mine = env.obs_spec.to_dict()
    for group in groups:
        theirs = [list(t) for t in ckpt["obs_spec"].get(group, [])]
        if theirs != [list(t) for t in mine.get(group, [])]:
            raise ConfigError(f"{path} reads another {group!r} observation layout than this env config gives "
                              f"(e.g. another env.n_cubes or env.observations); evaluate it with the env config "
                              f"it was made with")


class ScriptedPolicy(Policy):
    """The scripted expert (numpy, CPU only)."""

    kind = "scripted"
    devices = ("cpu",)

    def __init__(self, env):
        super().__init__("cpu")
        self.expert = ScriptedExpert.for_env(env)

    def act(self, obs: dict) -> torch.Tensor:
        return self.expert.act(obs)

    def reset(self, done) -> None:
        self.expert.reset(done)


class NetworkPolicy(Policy):
    """Any network of ``rl/``'s policy interface acting with its mean action (raw: only the env clips),
    its recurrent memory carried from step to step and reset where an episode starts:
    ``act_inference(obs, memory) -> (action, memory)``, ``initial_memory(n, device)``,
    ``reset_memory(memory, done)`` (an MLP's memory is None). A network whose config reads the previous
    action (``cfg.prev_action`` other than "off", the students) gets its own last action, zeros at an
    episode's first step, as the dataset stores it."""

    def __init__(self, net, device: str | torch.device = "cpu", kind: str = ""):
        super().__init__(device)
        self.net = net.to(self.device).eval()
        self.kind = kind or self.kind
        self.uses_prev_action = getattr(getattr(net, "cfg", None), "prev_action", "off") != "off"
        self.memory = None
        self.prev_action: torch.Tensor | None = None  # (N, A)

    @torch.no_grad()
    def reset(self, done) -> None:
        done = torch.as_tensor(done).to(self.device)
        if self.memory is None or bool(done.all()):
            self.memory = self.net.initial_memory(len(done), self.device)
            self.prev_action = None
        else:
            self.memory = self.net.reset_memory(self.memory, done)
            if self.prev_action is not None:
                self.prev_action = torch.where(done[:, None], torch.zeros_like(self.prev_action), self.prev_action)

    @torch.no_grad()
    def act(self, obs: dict) -> torch.Tensor:
        first = next(iter(obs.values()))
        if self.memory is None:  # acting before any reset: every env starts an episode
            self.reset(torch.ones(first.shape[0], dtype=torch.bool))
        inputs = {k: v.to(self.device) for k, v in obs.items()}
        if self.uses_prev_action:
            if self.prev_action is None:
                self.prev_action = torch.zeros(first.shape[0], self.net.cfg.action_dim, device=self.device)
            inputs["prev_action"] = self.prev_action
        action, self.memory = self.net.act_inference(inputs, self.memory)
        self.prev_action = action
        return action.to(first.device)  # back on the env's device


class PolicyTeacher(NetworkPolicy):
    """A trained PPO teacher acting with its mean action (the injected failures supply the variety):
    the weights the teacher stage selected by closed-loop success if it selected (teacher.select),
    else the last ones."""

    kind = "ppo_mlp"

    def __init__(self, ckpt: dict | None = None, policy: MLPActorCritic | None = None,
                 device: str | torch.device = "cpu"):
        if policy is None:
            policy = MLPActorCritic(MLPPolicyConfig(**ckpt["policy_cfg"]))
            policy.load_state_dict((ckpt.get("selected") or ckpt)["model"])
        super().__init__(policy, device)
        self.policy = self.net


@register("scripted")
def _scripted(ckpt: dict, env, device: torch.device) -> Policy:
    return ScriptedPolicy(env)


@register("student")
def _student(ckpt: dict, env, device: torch.device) -> Policy:
    from rl.student.checkpoint import load_student  # the students' modules load only for their checkpoints

    check_obs_spec(ckpt, env, [ckpt["model_config"]["cfg"]["group"]])
    model, _ = load_student(ckpt, env_name=env.cfg.name)
    return NetworkPolicy(model, device, kind="student")


@register("ppo_mlp")
def _ppo_mlp(ckpt: dict, env, device: torch.device) -> Policy:
    cfg = ckpt["policy_cfg"]
    check_obs_spec(ckpt, env, sorted({cfg["actor_obs"]}))
    return PolicyTeacher(ckpt, device=device)
