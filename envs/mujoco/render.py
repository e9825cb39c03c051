"""Offscreen RGB rendering of one env through MuJoCo's renderer (EGL, else OSMesa).

Where no GL backend exists, ``render`` raises ``RenderUnavailable`` with the reason; nothing else in
the env needs GL.
"""

from __future__ import annotations

import os

import numpy as np


class RenderUnavailable(RuntimeError):
    pass


def _ensure_backend() -> None:
    # MuJoCo reads MUJOCO_GL at import of its GL module; headless machines need egl or osmesa.
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


class EnvRenderer:
    """Renders env ``i`` from the ``front`` camera; one GL context reused across frames."""

    def __init__(self, env, width: int = 320, height: int = 240):
        _ensure_backend()
        import mujoco

        self.env, self.width, self.height = env, width, height
        self._renderers: dict[int, object] = {}
        self._mujoco = mujoco

    def render(self, env_id: int, overlay: str | None = None) -> np.ndarray:
        r = self._renderers.get(env_id)
        if r is None:
            try:
                # Each env has its own model (hidden sizes), so each gets its own renderer.
                r = self._mujoco.Renderer(self.env.models[env_id], self.height, self.width)
            except Exception as exc:  # no EGL/OSMesa library, no display
                raise RenderUnavailable(f"offscreen rendering is unavailable ({exc}); set MUJOCO_GL=egl or "
                                        f"osmesa (apt-get install libosmesa6) to render") from exc
            self._renderers[env_id] = r
        r.update_scene(self.env.datas[env_id], camera="front")
        frame = r.render().copy()
        if overlay:
            frame = _stamp(frame, overlay)
        return frame

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


def save_video(frames: list[np.ndarray], out, every: int = 1) -> None:
    """Write ``frames`` (one per ``every`` control steps at 20 Hz) as a looping GIF, or any format
    imageio knows from the suffix (.mp4: real time)."""
    from pathlib import Path

    import imageio.v2 as imageio

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".gif":
        imageio.mimsave(out, frames, duration=0.05 * every, loop=0)
    else:
        imageio.mimsave(out, frames, fps=max(1, 20 // every))


def _stamp(frame: np.ndarray, text: str) -> np.ndarray:
    """Draw a short caption with matplotlib's font rasteriser (no extra dependency)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = frame.shape[:2]
    fig = Figure(figsize=(w / 100, h / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(frame)
    ax.axis("off")
    ax.text(6, 16, text, color="white", fontsize=9, bbox=dict(facecolor="black", alpha=0.5, pad=2))
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
