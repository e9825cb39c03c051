"""Group-relative advantages (GRPO style, Shao et al. 2024): ``RunnerConfig.advantage="group"``.

No critic. The N envs form N / G groups of G consecutive envs (envs [g G, (g + 1) G)). At each rollout
start every env is reset; the first env of each group (its leader) gets a fresh episode, or a state a
``group_start(env, leader_ids)`` hook sets (demonstration states), and the other G - 1 envs of its group
are set to exactly that state. The G envs then differ only by their action noise: that is what the
group compares.

Each env acts until its first done; its later steps in the rollout (the next episode, which the next
rollout's reset cuts off) are masked out of the update (``valid`` False). The rollout must be at least
one episode long, so every env finishes one.

The return of env n is the plain sum of its episode's rewards (undiscounted: the episode is short and
finite and the group compares whole episodes, so there is no horizon to discount over), and every valid
step of env n gets the advantage (R_n - mean of its group) / (std of its group + eps): zero mean and unit
(population) std in each group, so no rollout-wide normalisation follows. A group whose returns are all
equal teaches nothing: its advantages are 0.
"""

from __future__ import annotations

import torch


def check_group_size(num_envs: int, group_size: int) -> None:
    if group_size < 2 or num_envs % group_size:
        raise ValueError(f"group_size={group_size} with {num_envs} envs: groups need at least 2 envs and "
                         f"num_envs must be a multiple of group_size (envs [g G, (g + 1) G) form group g)")


def group_advantages(returns: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """returns (N,) -> advantages (N,): each return normalised within its block of ``group_size``
    consecutive envs, (R - group mean) / (group population std + eps)."""
    N, G = returns.shape[0], group_size
    check_group_size(N, G)
    grouped = returns.reshape(N // G, G)  # (N / G, G)
    mean = grouped.mean(1, keepdim=True)  # (N / G, 1)
    std = grouped.std(1, correction=0, keepdim=True)  # (N / G, 1) population std: unit std after dividing
    return ((grouped - mean) / (std + eps)).reshape(N)


def first_episode_mask(dones: torch.Tensor) -> torch.Tensor:
    """dones (T, N) -> valid (T, N) bool: the steps up to and including each env's first done."""
    done = dones.bool()
    done_before = (done.cumsum(0) - done.long()) > 0  # (T, N) a done happened at an earlier step
    return ~done_before


def group_targets(rewards: torch.Tensor, dones: torch.Tensor, group_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rewards, dones (T, N) of a group rollout -> (valid, returns, advantages), each (T, N): returns and
    advantages are env n's episode return and group advantage on its valid steps, 0 on the masked ones."""
    finished = dones.bool().any(0)  # (N,)
    if not bool(finished.all()):
        missing = torch.nonzero(~finished).flatten().tolist()
        raise RuntimeError(f"envs {missing} did not finish an episode in the group rollout: "
                           f"num_steps_per_env must be at least the episode length")
    valid = first_episode_mask(dones)  # (T, N)
    episode_return = (rewards * valid).sum(0)  # (N,) undiscounted
    advantage = group_advantages(episode_return, group_size)  # (N,)
    return valid, episode_return.expand_as(rewards) * valid, advantage.expand_as(rewards) * valid


def reset_groups(env, group_size: int, group_start=None) -> dict:
    """Reset every env and give each group one start state: the leaders (envs 0, G, 2G, ...) get fresh
    episodes, ``group_start(env, leader_ids)`` may then set their states, and the other G - 1 envs of each
    group are set to exactly their leader's state. ``keep_episode_counter``: a follower keeps its own
    episode counter and base seed, so its episodes after this group start are its own. Returns the obs."""
    N, G = env.num_envs, group_size
    check_group_size(N, G)
    env.reset()  # every env starts an episode (no seed: each draws its next one from its own counter)
    ids = torch.arange(N).reshape(N // G, G)  # (N / G, G) the envs of each group
    leaders, followers = ids[:, 0], ids[:, 1:].reshape(-1)  # (N / G,), (N / G * (G - 1),)
    if group_start is not None:
        group_start(env, leaders)
    states = env.get_state(leaders)  # (N / G, S)
    env.set_state(followers, states.repeat_interleave(G - 1, 0), keep_episode_counter=True)
    return env.get_observations()
