"""Isaac Lab 3.0 behind our env contract (``envs/base.py``): the only package that imports isaaclab.

Optional: Isaac Lab needs Python 3.12 and its own venv (``make isaaclab``; see docs/isaaclab.md).
Everything here imports isaaclab lazily, so the core venv imports this package and gets one clear
error if it asks for an Isaac Lab env.

- ``assets.gripper_usd()``: the gripper MJCF of the MuJoCo tasks converted to USD (cached).
- ``task_cfg``: our tasks (Lift-v1, PickLoose-v1, StackPickMulti-v1, ...) as Isaac Lab
  ``ManagerBasedRLEnvCfg`` scenes: that gripper, cubes and a table from Isaac Lab's shape spawners.
- ``task_env.IsaacLabTaskEnv``: those scenes stepped on Newton with the MuJoCo tasks' own task
  logic (``envs/task_env.GripperTaskEnv``): one task definition, two simulators.
"""

from __future__ import annotations

from envs.base import ConfigError

INSTALL_HINT = ("Isaac Lab is an optional extra on Python 3.12: run `make isaaclab`, then run the command with "
                ".venv-isaaclab/bin/python (docs/isaaclab.md)")


# Isaac Lab runs one simulation per process: the envs open in this one (make_env puts the next in a child)
OPEN = {"simulations": 0}


def torch_view(x):
    """Isaac Lab 3.0 data buffers are warp-backed ProxyArrays: ``.torch`` is the torch view."""
    return x.torch if hasattr(x, "torch") else x


def xyzw_to_wxyz(q):
    """Quaternions in the last axis (numpy or torch), Isaac Lab 3.0's order to MuJoCo's (ours)."""
    return q[..., [3, 0, 1, 2]]


def wxyz_to_xyzw(q):
    return q[..., [1, 2, 3, 0]]


def isaaclab_available() -> bool:
    try:
        import isaaclab  # noqa: F401
        import isaaclab_newton  # noqa: F401
    except ImportError:
        return False
    return True


def require_isaaclab() -> None:
    """Raise ``ConfigError`` (exit 2, one line) where isaaclab cannot be imported."""
    if not isaaclab_available():
        raise ConfigError(f"env.simulator=isaaclab needs isaaclab, which this Python cannot import; {INSTALL_HINT}")
