"""The PPO teacher: an MLP actor-critic on the privileged group, trained with perturbations on.

Two levers (on Lift, before the PPO core matched rsl_rl, plain PPO was seed-dependent; see the
README for what each costs and gives now):
- a warm start: the actor first imitates the scripted expert's raw actions (regression of the
  Gaussian mean; the log-std keeps its initial value), then a fresh critic learns on the frozen
  actor's rollouts for a few iterations before PPO moves the actor from a small step;
- a reverse curriculum (``teacher/curriculum.py``): a share of episodes starts from states of the
  scripted expert's successful episodes, uniformly chosen or (adaptive) from just before success,
  then further back.
"""

from __future__ import annotations

import torch
from rich.progress import track

from envs.base import ConfigError
from envs.scripted import ScriptedExpert
from rl.networks import MLPActorCritic, MLPPolicyConfig, split_parameters


def build_policy(env, cfg) -> MLPActorCritic:
    group = cfg.obs_group
    dim = env.obs_spec.dim(group)
    blocks, key = cube_blocks(env.obs_spec, group) if cfg.get("sort_cubes", False) else ([], [])
    return MLPActorCritic(MLPPolicyConfig(
        actor_obs=group, critic_obs=group, actor_dim=dim, critic_dim=dim, action_dim=env.num_actions,
        actor_hidden=list(cfg.actor_hidden), critic_hidden=list(cfg.critic_hidden), init_std=float(cfg.init_std),
        sort_blocks=blocks, sort_key=key))


def cube_blocks(spec, group: str) -> tuple[list[list[int]], list[int]]:
    """The cubes' column blocks in ``group`` and, inside a block, the columns of the cube's offset from
    the gripper (``cube_rel``): what ``rl.networks.nearest_first`` sorts by. ([], []) for one cube."""
    cubes = [e for e in spec.entities(group) if e.startswith("cube")]
    if len(cubes) < 2:
        return [], []
    blocks = []
    for e in cubes:
        cols = spec.entity_slices(group, e)
        blocks.append([cols[0][0], cols[-1][1]])
    rel = [t for t in spec.groups[group] if t.entity == cubes[0] and t.name == "rel"]
    if not rel:
        raise ConfigError(f"teacher.sort_cubes needs the cube_rel term in the {group!r} observation group; "
                          f"add it to env.observations.{group} or set teacher.sort_cubes=false")
    return blocks, [rel[0].start - blocks[0][0], rel[0].end - rel[0].start]


def expert_pairs(env, seed: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(obs dict of (M, D), raw expert actions (M, A)) from ``steps`` steps of every env."""
    expert = ScriptedExpert.for_env(env)
    obs = env.reset(seed=seed)
    expert.reset(torch.ones(env.num_envs, dtype=torch.bool))
    observations: dict[str, list] = {k: [] for k in obs}
    actions = []
    for _ in track(range(steps), description="warm start: expert rollouts", transient=True):
        action = expert.act(obs)
        for k in obs:
            observations[k].append(obs[k])
        actions.append(action)
        obs, _, done, _ = env.step(action)
        expert.reset(done)
    return {k: torch.cat(v) for k, v in observations.items()}, torch.cat(actions)


def behaviour_clone(policy, obs: dict, actions: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> dict:
    """Fit the actor's mean to raw expert actions (MSE); the normaliser learns the expert's states."""
    policy.update_normalizers(obs)
    group = policy.cfg.actor_obs
    opt = torch.optim.Adam(split_parameters(policy)[0], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    first = last = None
    for _ in track(range(steps), description="warm start: imitation", transient=True):
        idx = torch.randint(0, len(actions), (batch,), generator=gen)
        mean = policy.mean_action({group: obs[group][idx]})
        loss = (mean - actions[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    return {"bc_loss_first": first, "bc_loss_last": last, "bc_samples": len(actions)}
