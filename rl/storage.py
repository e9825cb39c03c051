"""The rollout buffer: T steps of N envs, and GAE over it.

Actions are stored raw, exactly as sampled (the env clips its own copy), with the log-probs of
those raw actions. Rewards of steps that ended in a time-out already include
``gamma * V(final_obs)`` (added by the runner), so GAE treats every done as an episode end.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class RolloutStorage:
    def __init__(self, num_steps: int, num_envs: int, obs_dims: dict[str, int], action_dim: int,
                 device: str | torch.device = "cpu"):
        T, N = num_steps, num_envs
        self.T, self.N = T, N
        self.obs = {k: torch.zeros(T, N, d, device=device) for k, d in obs_dims.items()}  # (T, N, D)
        self.actions = torch.zeros(T, N, action_dim, device=device)  # (T, N, A) raw
        self.rewards = torch.zeros(T, N, device=device)
        self.dones = torch.zeros(T, N, device=device)
        self.values = torch.zeros(T, N, device=device)
        self.log_probs = torch.zeros(T, N, device=device)
        self.means = torch.zeros(T, N, action_dim, device=device)
        self.stds = torch.zeros(T, N, action_dim, device=device)
        self.advantages = torch.zeros(T, N, device=device)
        self.returns = torch.zeros(T, N, device=device)
        # (T, N) steps the update learns from: all by default (GAE); a group rollout masks each env's
        # steps after its first done (rl/group_advantage.py). Reset to all True by clear().
        self.valid = torch.ones(T, N, dtype=torch.bool, device=device)
        self.step = 0

    def add(self, obs: dict, actions, rewards, dones, values, log_probs, means, stds) -> None:
        t = self.step
        if t >= self.T:
            raise RuntimeError("rollout storage is full; call clear() after each update")
        for k in self.obs:
            self.obs[k][t] = obs[k]
        self.actions[t], self.rewards[t], self.dones[t] = actions, rewards, dones.float()
        self.values[t], self.log_probs[t], self.means[t], self.stds[t] = values, log_probs, means, stds
        self.step += 1

    def clear(self) -> None:
        self.step = 0
        self.valid.fill_(True)

    def compute_returns(self, last_values: torch.Tensor, gamma: float, lam: float) -> None:
        self.advantages, self.returns = gae(self.rewards, self.values, self.dones, last_values, gamma, lam)

    def minibatches(self, num_minibatches: int, num_epochs: int, generator: torch.Generator | None = None
                    ) -> Iterator[dict]:
        """Shuffled minibatches over all T*N samples, for each epoch (an MLP needs no sequences)."""
        total = self.T * self.N
        size = total // num_minibatches
        flat = {
            "obs": {k: v.reshape(total, -1) for k, v in self.obs.items()},
            "actions": self.actions.reshape(total, -1), "values": self.values.reshape(total),
            "log_probs": self.log_probs.reshape(total), "means": self.means.reshape(total, -1),
            "stds": self.stds.reshape(total, -1), "advantages": self.advantages.reshape(total),
            "returns": self.returns.reshape(total), "valid": self.valid.reshape(total),
        }
        for _ in range(num_epochs):
            order = torch.randperm(total, generator=generator)
            for i in range(num_minibatches):
                idx = order[i * size: (i + 1) * size]
                yield {k: ({g: x[idx] for g, x in v.items()} if isinstance(v, dict) else v[idx])
                       for k, v in flat.items()}


def gae(rewards, values, dones, last_values, gamma: float, lam: float):
    """Generalised advantage estimation. rewards, values, dones: (T, N); last_values: (N,).

    Returns (advantages, returns), each (T, N). A done step does not bootstrap from the next
    state's value (that state belongs to the next episode).
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(last_values)
    next_value = last_values
    for t in reversed(range(T)):
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        next_advantage = delta + gamma * lam * not_done * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values
