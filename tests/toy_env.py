"""A tiny env with the VecEnv contract, for fast PPO tests: move a point to the origin.

obs["privileged"]: (N, 2) position. Actions (N, 2) raw; the env clips them to [-1, 1] and moves the
point by 0.1 * action. Reward: -|pos|, plus 5 on reaching |pos| < 0.1 (terminates). Time-out after
``horizon`` steps.
"""

import torch


class PointReach:
    def __init__(self, num_envs=64, horizon=20, seed=0):
        self.num_envs, self.num_actions, self.max_episode_length = num_envs, 2, horizon
        self.device = torch.device("cpu")
        self.gen = torch.Generator().manual_seed(seed)
        self.pos = torch.zeros(num_envs, 2)
        self.steps = torch.zeros(num_envs, dtype=torch.long)
        self.ret = torch.zeros(num_envs)

    @property
    def episode_length_buf(self):
        return self.steps

    @episode_length_buf.setter
    def episode_length_buf(self, v):
        self.steps = torch.as_tensor(v).long().clone()

    def _obs(self):
        return {"privileged": self.pos.clone(), "policy": self.pos.clone()}

    def _reset(self, ids):
        self.pos[ids] = torch.rand(len(ids), 2, generator=self.gen) * 2 - 1
        self.steps[ids] = 0
        self.ret[ids] = 0

    def reset(self, seed=None):
        if seed is not None:
            self.gen.manual_seed(seed)
        self._reset(torch.arange(self.num_envs))
        return self._obs()

    def get_state(self):
        """(N, 4): position, step count and return so far (the generator is not per env)."""
        return torch.cat([self.pos, self.steps[:, None].float(), self.ret[:, None]], 1)

    def set_state(self, ids, state):
        self.pos[ids], self.steps[ids], self.ret[ids] = state[ids, :2], state[ids, 2].long(), state[ids, 3]

    def get_observations(self):
        return self._obs()

    def step(self, action):
        self.pos = self.pos + 0.1 * action.clamp(-1, 1)  # the env boundary
        self.steps += 1
        dist = self.pos.norm(dim=1)
        success = dist < 0.1
        reward = -dist + 5.0 * success
        self.ret += reward
        time_outs = (self.steps >= self.max_episode_length) & ~success
        done = success | time_outs
        obs = self._obs()
        extras = {"time_outs": time_outs, "success": success, "final_obs": {k: v.clone() for k, v in obs.items()},
                  "episode": {"return": self.ret.clone(), "length": self.steps.clone().float(),
                              "attempts": torch.ones(self.num_envs, dtype=torch.long)},
                  "failure": {"object_lost": torch.zeros(self.num_envs, dtype=torch.bool),
                              "sim_unstable": torch.zeros(self.num_envs, dtype=torch.bool)}}
        ids = torch.nonzero(done).flatten()
        if len(ids):
            self._reset(ids)
            obs = self._obs()
        return obs, reward, done, extras
