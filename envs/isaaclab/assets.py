"""The gripper of the MuJoCo tasks as USD, converted without Kit and cached.

Isaac Lab's own ``MjcfConverter`` needs Isaac Sim; the ``mujoco-usd-converter`` package (pinned in the
isaaclab extra to the venv's MuJoCo) does it kit-less in about a second. The cache key is the MJCF's
hash, so a changed gripper converts again and an unchanged one never does.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from envs.mujoco import scene

USD_NAME = "retry_gripper.usdc"  # the converter names the file after the MJCF's model name


def cache_root() -> Path:
    root = os.environ.get("RETRY_IMITATION_CACHE") or Path.home() / ".cache" / "retry_imitation"
    return Path(root) / "usd"


def gripper_usd(cache_dir: Path | None = None) -> Path:
    """Path of the gripper's USD; converts ``scene.build_gripper_mjcf()`` on first use."""
    mjcf = scene.build_gripper_mjcf()
    out = (cache_dir or cache_root()) / hashlib.sha256(mjcf.encode()).hexdigest()[:16]
    usd = out / USD_NAME
    if usd.exists():
        return usd
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"tmp-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    (tmp / "gripper.xml").write_text(mjcf)
    cmd = [sys.executable, "-m", "mujoco_usd_converter", str(tmp / "gripper.xml"), str(tmp),
           "--no-layer-structure", "--no-physics-scene"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not (tmp / USD_NAME).exists():
        raise RuntimeError(f"converting the gripper MJCF to USD failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    os.replace(tmp / USD_NAME, usd)  # atomic: a concurrent or killed conversion never leaves half a file
    return usd
