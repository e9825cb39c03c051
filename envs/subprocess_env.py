"""An env built and stepped in a child process, behind the same contract (``envs/base.py``).

Isaac Lab runs one simulation per process, so a stage that needs a second env beside its training
env (fine-tuning's selection and final evaluation) gets this instead: ``make_env`` returns one when an
Isaac Lab env is already open in the process. The child is spawned (a fresh interpreter, the same
Python), builds the env with ``make_env`` and answers calls over a pipe; tensors travel pickled.
"""

from __future__ import annotations

import multiprocessing as mp

# What a caller reads as attributes; everything else is a method call in the child.
_ATTRS = ("num_envs", "num_actions", "max_episode_length", "obs_spec", "cfg", "n_cubes", "n_objects",
          "device", "simulator", "sim_device", "state_size")
_CALLS = ("reset", "step", "get_observations", "get_state", "set_state", "active_perturbations")


def _serve(conn, env_cfg: dict) -> None:
    from envs import make_env

    try:
        env = make_env(env_cfg)
        conn.send((True, {k: getattr(env, k) for k in _ATTRS if hasattr(env, k)}))
    except Exception as exc:  # the parent re-raises it: a bad config stays one clear error
        conn.send((False, exc))
        return
    while True:
        name, args, kwargs = conn.recv()
        if name == "close":
            env.close()
            conn.send((True, None))
            return
        try:
            conn.send((True, getattr(env, name)(*args, **kwargs)))
        except Exception as exc:
            conn.send((False, exc))


class SubprocessEnv:
    def __init__(self, env_cfg: dict):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, env_cfg), daemon=True, name="env")
        self._proc.start()
        child.close()
        for key, value in self._recv().items():
            setattr(self, key, value)

    def _recv(self):
        try:
            ok, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the env's child process died (exit code {self._proc.exitcode})") from None
        if not ok:
            raise value
        return value

    def _call(self, name: str, *args, **kwargs):
        self._conn.send((name, args, kwargs))
        return self._recv()

    def __getattr__(self, name: str):
        if name in _CALLS:
            return lambda *args, **kwargs: self._call(name, *args, **kwargs)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (the env lives in a child process)")

    def close(self) -> None:
        if self._proc.is_alive():
            self._call("close")
            self._proc.join(timeout=30)
        self._conn.close()
