"""Any Isaac Lab ``ManagerBasedRLEnv`` (a registered task id) behind our env contract (``envs/base.py``).

For Isaac Lab's own tasks (``Isaac-Lift-Franka``, the contrib stack task with ``presets=newton_mjwarp``)
and for ours registered with gymnasium (``register_tasks``: ``RetryImitation-Lift-v1``, ...). Our tasks'
full pipeline uses ``IsaacLabTaskEnv`` (the MuJoCo tasks' task logic); this adapter gives what any
Isaac Lab task has:

- observation groups mapped to ``policy`` / ``privileged`` by ``groups`` (the stock lift task has
  ``policy``, ``proprio``, ``perception`` and no critic group), an ``obs_spec`` with one entity per
  observation term (a token per term for the student);
- ``step`` returns ``done = terminated | truncated`` and ``extras["time_outs"]``, ``extras["terminated"]``,
  ``extras["final_obs"]`` (the env's ``compute_final_obs``, switched on here), ``extras["log"]``;
- raw actions go to the env unclipped (its ``Box`` is unbounded; an action term clips if its cfg says so);
- ``get_state`` / ``set_state``: ``scene.get_state(is_relative=True)`` flattened to (n, S) float64 in
  a fixed order, quaternions as wxyz (our convention; Isaac Lab 3.0 is xyzw), restored by ``reset_to``.

Task logic that Isaac Lab's tasks do not have (attempts, success flags, perturbations) is not invented
here: ``extras`` carries only what the env reports.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.base import ObsSpec, ObsTerm
from envs.isaaclab import OPEN, require_isaaclab, wxyz_to_xyzw, xyzw_to_wxyz
from envs.isaaclab import torch_view as _t

_QUAT_KEYS = ("root_pose",)  # state entries whose last 4 values are a quaternion


class IsaacLabVecEnv:
    simulator = "isaaclab"

    def __init__(self, task: str, num_envs: int, sim_device: str = "cpu", device: str = "cpu",
                 groups: dict[str, str] | None = None, overrides: list[str] | None = None, seed: int = 0):
        require_isaaclab()
        import gymnasium as gym
        import isaaclab_tasks  # noqa: F401  registers Isaac Lab's task ids
        from isaaclab.app.sim_launcher import launch_simulation
        from isaaclab_tasks.utils.parse_cfg import parse_env_cfg

        from envs.isaaclab.task_cfg import register_tasks

        register_tasks()
        # overrides passed explicitly: with None, Isaac Lab's hydra parses sys.argv
        cfg = parse_env_cfg(task, device=sim_device, num_envs=num_envs, overrides=list(overrides or []))
        cfg.compute_final_obs = True
        cfg.seed = seed
        self._launch = launch_simulation(cfg, {"headless": True})
        self._launch.__enter__()
        self.env = gym.make(task, cfg=cfg).unwrapped
        OPEN["simulations"] += 1  # one simulation per process: make_env puts the next one in a child
        self.task, self.num_envs, self.device = task, num_envs, torch.device(device)
        self.sim_device = torch.device(sim_device)
        self.num_actions = int(self.env.action_manager.total_action_dim)
        self.max_episode_length = int(self.env.max_episode_length)
        available = list(self.env.observation_manager.active_terms)
        self.groups = groups or {"policy": "policy", "privileged": "critic" if "critic" in available else "policy"}
        for ours, theirs in self.groups.items():
            if theirs not in available:
                raise ValueError(f"{task} has no observation group {theirs!r} (for {ours}); it has {available}")
        self.obs_spec = self._spec()
        self._layout: list[tuple[str, str, str, int]] | None = None  # (kind, asset, key, width) of get_state

    # ------------------------------------------------------------------ observations
    def _spec(self) -> ObsSpec:
        om = self.env.observation_manager
        spec = ObsSpec()
        for ours, theirs in self.groups.items():
            terms, start = [], 0
            for name, dims in zip(om.active_terms[theirs], om.group_obs_term_dim[theirs]):
                width = int(np.prod(dims))
                terms.append(ObsTerm(name, name, start, start + width))
                start += width
            spec.groups[ours] = terms
        return spec

    def _obs(self, obs: dict) -> dict[str, torch.Tensor]:
        return {ours: _t(obs[theirs]).reshape(self.num_envs, -1).float().to(self.device)
                for ours, theirs in self.groups.items()}

    def reset(self, seed: int | None = None) -> dict[str, torch.Tensor]:
        obs, _ = self.env.reset(seed=seed)
        return self._obs(obs)

    def get_observations(self) -> dict[str, torch.Tensor]:
        return self._obs(self.env.observation_manager.compute())

    @property
    def episode_length_buf(self) -> torch.Tensor:
        return self.env.episode_length_buf

    def step(self, action: torch.Tensor):
        obs, reward, terminated, truncated, extras = self.env.step(torch.as_tensor(action).to(self.sim_device))
        done = (terminated | truncated).to(self.device)
        out = {"time_outs": truncated.to(self.device), "terminated": terminated.to(self.device),
               "log": extras.get("log", {})}
        out["final_obs"] = self._obs(extras["final_obs"]) if "final_obs" in extras else self._obs(obs)
        return self._obs(obs), reward.float().to(self.device), done, out

    # ------------------------------------------------------------------ full state
    def _flat(self, state: dict, ids: torch.Tensor) -> torch.Tensor:
        parts, layout = [], []
        for kind in sorted(state):
            for asset in sorted(state[kind]):
                for key in sorted(state[kind][asset]):
                    x = _t(state[kind][asset][key])[ids].double().reshape(len(ids), -1).cpu()
                    if key in _QUAT_KEYS:
                        x = torch.cat([x[:, :-4], xyzw_to_wxyz(x[:, -4:])], 1)
                    parts.append(x)
                    layout.append((kind, asset, key, x.shape[1]))
        self._layout = layout
        return torch.cat(parts, 1)

    def get_state(self, env_ids=None) -> torch.Tensor:
        ids = torch.arange(self.num_envs) if env_ids is None else torch.as_tensor(env_ids).reshape(-1)
        return self._flat(self.env.scene.get_state(is_relative=True), ids.to(self.sim_device))

    @property
    def state_size(self) -> int:
        return int(self.get_state([0]).shape[1])

    def set_state(self, env_ids, states) -> None:
        ids = torch.as_tensor(env_ids).reshape(-1).to(self.sim_device)
        states = torch.as_tensor(states, dtype=torch.float64).reshape(len(ids), -1)
        if self._layout is None:
            self.get_state([0])
        if states.shape[1] != sum(w for *_, w in self._layout):
            raise ValueError(f"state has {states.shape[1]} values; {self.task}'s states have "
                             f"{sum(w for *_, w in self._layout)}")
        state: dict = {}
        pos = 0
        for kind, asset, key, width in self._layout:
            x = states[:, pos: pos + width]
            pos += width
            if key in _QUAT_KEYS:
                x = torch.cat([x[:, :-4], wxyz_to_xyzw(x[:, -4:])], 1)
            state.setdefault(kind, {}).setdefault(asset, {})[key] = x.float().to(self.sim_device)
        self.env.reset_to(state, ids, is_relative=True)

    def close(self) -> None:
        if getattr(self, "env", None) is not None:
            self.env.close()
            self.env = None
            self._launch.__exit__(None, None, None)
            OPEN["simulations"] -= 1
