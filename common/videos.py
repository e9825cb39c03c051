"""Videos of evaluation episodes (``stage=eval eval.videos=K``): see what a policy does, not only its score.

``record_first_episodes`` replays the first round of an evaluation (the same env, base seed and
policy, one torch thread as ``common.evaluate`` acts), so envs 0..K-1 play exactly the episodes the
table counted first, and saves each as a GIF captioned with the step, the attempt and the cubes the
policy cannot see. MuJoCo only (it renders the env's own models); the outcome of each recorded
episode is returned beside its file, so a video named ``..._failure.gif`` is one of the table's failures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.evaluate import one_thread
from common.rollout import first_episodes


def record_first_episodes(env, policy, seed: int, count: int, out_dir: Path, prefix: str, every: int = 2,
                          width: int = 320, height: int = 240) -> list[dict]:
    """GIFs of envs 0..count-1's first episodes from ``env.reset(seed=seed)`` under ``policy``: one
    frame every ``every`` control steps, before each step. Returns one dict per episode: ``file``,
    ``env`` (index), ``success``, ``length``, ``attempts``. Raises ``RenderUnavailable`` without GL."""
    from envs.mujoco.render import EnvRenderer, save_video

    count = min(int(count), env.num_envs)
    renderer = EnvRenderer(env, width, height)
    frames: list[list[np.ndarray]] = [[] for _ in range(count)]
    clock = {"t": 0}

    def capture(alive: np.ndarray) -> None:  # (N,) bool: envs still in their first episode
        t = clock["t"]
        clock["t"] += 1
        if t % every:
            return
        for i in np.flatnonzero(alive[:count]):
            unseen = [str(c) for c in range(env.n_cubes) if env.st["occl_left"][i, c] > 0]
            caption = (f"{prefix}  env {i}  step {t}  attempt {int(env.st['attempt'][i]) + 1}"
                       + (f"  unseen cube {','.join(unseen)}" if unseen else ""))
            frames[i].append(renderer.render(int(i), caption))

    try:
        with one_thread():
            out = first_episodes(env, policy.act, policy.reset, seed=seed, before_step=capture)
    finally:
        renderer.close()
    videos = []
    for i in range(count):
        outcome = "success" if out["success"][i] else "failure"
        path = Path(out_dir) / f"{prefix}_env{i}_{outcome}.gif"
        save_video(frames[i] + [frames[i][-1]] * 5, path, every)  # a short hold on the last frame
        videos.append({"file": str(path), "env": i, "success": bool(out["success"][i]),
                       "length": int(out["length"][i]), "attempts": int(out["attempts"][i])})
    return videos
