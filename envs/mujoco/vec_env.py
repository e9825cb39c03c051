"""Batched MuJoCo env: N scenes stepped in threads, the contract of ``envs/base.py``; the task logic is
``envs/task_env.GripperTaskEnv``'s, this file is the physics.

Each env owns an MjModel copy (hidden mass, friction and size are model parameters) and an MjData.
Physics runs in a thread pool: ``mj_step`` releases the GIL, so 2 threads use 2 cores. Task logic
(held detection, attempts, reward, observations) runs vectorised in numpy over all envs, float64
inside; observations leave as float32 torch tensors.
"""

from __future__ import annotations

import copy
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import mujoco
import numpy as np

from envs.mujoco import scene
from envs.mujoco.config import TaskConfig
from envs.task_env import ACTION_DIM, GripperTaskEnv

_log = logging.getLogger(__name__)
# MuJoCo prints blow-up warnings to the console; the env counts blow-ups itself (sim_unstable), so
# route the text to logging instead of interleaving it with progress bars.
mujoco.set_mju_user_warning(lambda msg: _log.debug("mujoco: %s", msg))

_BLOWUPS = [int(getattr(mujoco.mjtWarning, w)) for w in ("mjWARN_BADQACC", "mjWARN_BADQVEL", "mjWARN_BADQPOS")]
__all__ = ["ACTION_DIM", "MujocoVecEnv"]
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION  # physics + ctrl, eq_active, mocap, warm start


class MujocoVecEnv(GripperTaskEnv):
    simulator = "mujoco"

    def __init__(self, cfg: TaskConfig, device: str = "cpu"):
        self._init_task(cfg, device)
        N = self.num_envs
        self.mjcf = scene.build_mjcf(self.scene_spec)
        base_model = mujoco.MjModel.from_xml_string(self.mjcf)
        self.models = [copy.copy(base_model) for _ in range(N)]
        self.datas = [mujoco.MjData(m) for m in self.models]
        names = scene.cube_names(self.scene_spec)
        self._body = np.array([base_model.body(n).id for n in names])
        self._geom = np.array([base_model.geom(f"{n}_geom").id for n in names])
        self._eq = np.array([base_model.equality(f"{n}_static").id for n in names])
        self._mocap = np.array([base_model.body_mocapid[base_model.body(f"{n}_anchor").id] for n in names])
        assert base_model.nq == self._qpos.shape[1] and base_model.nv == self._qvel.shape[1]
        self.sim_state_size = self.mj_state_size = mujoco.mj_stateSize(base_model, STATE_SPEC)
        threads = cfg.num_threads or os.cpu_count() or 1
        # A few chunks per thread: a thread that drew cheap scenes takes more, so no core idles at the barrier.
        n_chunks = 1 if threads == 1 else min(4 * threads, N)
        self._chunks = [c for c in np.array_split(np.arange(N), n_chunks) if len(c)]
        self._pool = ThreadPoolExecutor(threads) if threads > 1 and N > 1 else None
        self._finish_init()

    # ------------------------------------------------------------------ physics
    def _run_chunk(self, ids: np.ndarray) -> None:
        # Hot loop: everything here runs per env with the GIL held, except mj_step itself.
        nstep, kicked, ctrl, qpos, qvel = self.cfg.substeps, self._kicked, self._ctrl, self._qpos, self._qvel
        for i in ids:
            m, d = self.models[i], self.datas[i]
            d.ctrl[:] = ctrl[i]
            if i in kicked:
                for o in np.nonzero(self._kick[i].any(1))[0]:
                    d.qvel[self._vadr[o]: self._vadr[o] + 3] += self._kick[i, o]
            mujoco.mj_step(m, d, nstep=nstep)
            warnings = d.warning
            for w in _BLOWUPS:  # MuJoCo resets an MjData that blows up and counts it here
                if warnings[w].number:
                    self._unstable[i] = True
                    warnings[w].number = 0
            qpos[i] = d.qpos
            qvel[i] = d.qvel

    def _physics_step(self) -> None:
        if self._pool is None:
            self._run_chunk(self._chunks[0])
        else:
            list(self._pool.map(self._run_chunk, self._chunks))

    def _read_data(self, ids) -> None:
        for i in ids:
            self._qpos[i] = self.datas[i].qpos
            self._qvel[i] = self.datas[i].qvel

    # ------------------------------------------------------------------ reset
    def _apply_hidden(self, i: int) -> None:
        """Write env i's hidden parameters into its model. Clobbers env i's MjData: callers write the
        episode's or the saved state into it afterwards."""
        m, st = self.models[i], self.st
        for o in range(self.n_objects):
            h, mass = st["half"][i, o], st["mass"][i, o]
            b, g = self._body[o], self._geom[o]
            m.body_mass[b] = mass
            m.body_inertia[b] = mass * (2 * h) ** 2 / 6.0
            m.geom_size[g] = h
            m.geom_rbound[g] = np.sqrt(3.0) * h
            m.geom_aabb[g] = [0, 0, 0, h, h, h]
            m.geom_friction[g, 0] = st["friction"][i, o]
        # The solver reads constants derived from mass and inertia (body_subtreemass, body_invweight0,
        # dof_invweight0, ...); without this they keep the base model's cube. A pure function of the
        # model's parameters (it works at qpos0 in d), so set_state on another env rebuilds the same.
        # Cost: ~15 us per reset (one StackPickMulti env, 3000 resets: 258/260 us with, 240/247 us
        # without), against 0.9 ms for one control step of that env: one reset per episode, noise.
        mujoco.mj_setConst(m, self.datas[i])

    def _write_episode(self, i, xy, yaw, half, grip, static) -> None:
        m, d = self.models[i], self.datas[i]
        self._apply_hidden(i)
        mujoco.mj_resetData(m, d)
        d.qpos[:] = self._episode_qpos(xy, yaw, half, grip)
        for o in range(self.n_objects):
            a = self._qadr[o]
            d.mocap_pos[self._mocap[o]] = d.qpos[a: a + 3]
            d.mocap_quat[self._mocap[o]] = d.qpos[a + 3: a + 7]
            d.eq_active[self._eq[o]] = bool(static[o])
        self.target[i] = [grip[0], grip[1], grip[2], 0.0]
        d.ctrl[:] = [*self.target[i], scene.FINGER_OPEN, scene.FINGER_OPEN]
        mujoco.mj_forward(m, d)
        self._reset_task_state(i)

    # ------------------------------------------------------------------ simulator state
    def _sim_state(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), self.sim_state_size))
        for r, i in enumerate(ids):
            mujoco.mj_getState(self.models[i], self.datas[i], out[r], STATE_SPEC)
        return out

    def _set_sim_state(self, ids: np.ndarray, states: np.ndarray) -> None:
        for r, i in enumerate(ids):
            self._apply_hidden(i)
            mujoco.mj_setState(self.models[i], self.datas[i], states[r], STATE_SPEC)
            mujoco.mj_forward(self.models[i], self.datas[i])

    def render(self, env_id: int = 0, width: int = 320, height: int = 240) -> np.ndarray:
        """RGB array (height, width, 3) uint8 of env ``env_id``; raises RenderUnavailable without GL."""
        from envs.mujoco.render import EnvRenderer

        if getattr(self, "_renderer", None) is None or (self._renderer.width, self._renderer.height) != (width, height):
            self._renderer = EnvRenderer(self, width, height)
        return self._renderer.render(env_id)

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
