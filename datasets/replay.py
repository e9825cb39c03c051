"""Replay stored episodes in the env: drift checks (``--verify``) and videos (``--video``).

Both rebuild the env from the store's own ``env_cfg`` attrs, so a dataset carries what it needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datasets.store import EpisodeStore
from envs import make_env
from envs.base import ConfigError


def env_for(store: EpisodeStore):
    cfg = dict(store.attrs.get("env_cfg") or {})
    if not cfg:
        raise ConfigError(f"{store.path} has no env_cfg attrs (an imported foreign file?); it cannot be replayed")
    cfg["num_envs"] = 1
    env = make_env(cfg)
    if env.state_size != store.array("data/sim_state").shape[1]:
        raise ConfigError(f"{store.path}: stored states have {store.array('data/sim_state').shape[1]} values, "
                          f"this env's have {env.state_size}; the dataset comes from another version of the env")
    return env


def verify(store: EpisodeStore, episodes=None, tolerance: float = 1e-6) -> dict:
    """Set each episode's first state, replay its raw actions, compare every following stored state."""
    env = env_for(store)
    ids = range(store.num_episodes) if episodes is None else episodes
    drifts = []
    for i in ids:
        ep = store.episode(i)
        states, actions = ep["sim_state"], ep["action"]
        env.set_state([0], torch.from_numpy(states[:1]))
        worst = 0.0
        for t in range(len(actions) - 1):  # the last step ends the episode and auto-resets
            env.step(torch.from_numpy(actions[t: t + 1]))
            now = env.get_state([0]).numpy()[0]
            worst = max(worst, float(np.abs(now - states[t + 1]).max()))
        drifts.append(worst)
    env.close()
    drifts = np.array(drifts)
    return {"episodes_checked": len(drifts), "max_drift": float(drifts.max()) if len(drifts) else 0.0,
            "episodes_over_tolerance": int((drifts > tolerance).sum()), "tolerance": tolerance,
            "passed": bool((drifts <= tolerance).all())}


def render_episode(store: EpisodeStore, episode: int, out: Path, every: int = 1, width: int = 320,
                   height: int = 240) -> int:
    """Render an episode from its stored states, captioned with the attempt and the occluded cubes."""
    from envs.mujoco.render import EnvRenderer, save_video

    if not 0 <= episode < store.num_episodes:
        raise ConfigError(f"episode {episode} does not exist; the store has {store.num_episodes} (0 to "
                          f"{store.num_episodes - 1})")
    env = env_for(store)
    ep = store.episode(episode)
    n_cubes = env.n_cubes
    visible = [ep.get(f"obs/policy/cube{c}_visible") for c in range(n_cubes)]
    renderer = EnvRenderer(env, width, height)
    frames = []
    for t in range(0, len(ep["action"]), every):
        env.set_state([0], torch.from_numpy(ep["sim_state"][t: t + 1]))
        hidden = [str(c) for c in range(n_cubes) if visible[c] is not None and visible[c][t, 0] < 0.5]
        caption = f"ep {episode}  step {t}  attempt {int(ep['attempt'][t]) + 1}" + \
            (f"  unseen cube {','.join(hidden)}" if hidden else "")
        frames.append(renderer.render(0, caption))
    renderer.close()
    env.close()
    save_video(frames, out, every)
    return len(frames)
