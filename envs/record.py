"""Record a video of the scripted expert: ``python -m envs.record --env lift --out docs/lift.gif``.

The caption shows the step, the attempt index and which cubes the policy cannot see (occlusion).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from envs import make_env
from envs.mujoco.render import RenderUnavailable, save_video
from envs.scripted import ScriptedExpert

ROOT = Path(__file__).resolve().parents[1]


def record(env_name: str, out: Path, seed: int, width: int, height: int, every: int) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "env" / f"{env_name}.yaml").read_text())
    cfg["seed"] = seed
    env = make_env(cfg, num_envs=1)
    expert = ScriptedExpert.for_env(env)
    obs = env.reset()
    expert.reset(torch.ones(1, dtype=torch.bool))
    from envs.mujoco.render import EnvRenderer

    renderer = EnvRenderer(env, width, height)
    frames, attempt, success = [], 0, False
    for t in range(env.max_episode_length):
        if t % every == 0:
            hidden = [str(c) for c in range(env.n_cubes) if env.st["occl_left"][0, c] > 0]
            caption = f"step {t}  attempt {attempt + 1}" + (f"  unseen cube {','.join(hidden)}" if hidden else "")
            frames.append(renderer.render(0, caption))
        obs, _, done, extras = env.step(expert.act(obs))
        attempt = int(extras["attempt"][0])
        if done[0]:
            success = bool(extras["success"][0])
            break
    renderer.close()
    save_video(frames + [frames[-1]] * 5, out, every)
    return {"frames": len(frames), "steps": t + 1, "attempts": attempt + 1, "success": success}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="lift", choices=[f.stem for f in (ROOT / "configs" / "env").glob("*.yaml")])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--every", type=int, default=2, help="keep one frame in this many control steps")
    a = p.parse_args()
    try:
        print(record(a.env, a.out, a.seed, a.width, a.height, a.every))
    except RenderUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
