"""The gripper tasks' dynamics, whatever simulates them: the base of ``MujocoVecEnv`` and ``IsaacLabTaskEnv``.

One task definition, two simulators. Everything here is task logic in numpy over all envs (float64
inside): seeds and episode sampling, the frame the task reads, held detection, attempts, reward,
success, perturbations, occlusion and observations (``step_logic.step`` reads top to bottom), and the
task's part of the full state. A simulator subclass owns the physics and keeps the gripper's and the
objects' state in MuJoCo's layout, whichever engine fills it:

``_qpos`` (N, 6 + 7 O): gripper joints ``x, y, z, yaw, finger_left, finger_right``, then per object its
position (relative to the env's origin) and quaternion **wxyz**; ``_qvel`` (N, 6 + 6 O): joint
velocities, then per object linear and angular velocity. Hooks (see each docstring):
``_physics_step``, ``_read_data``, ``_apply_hidden``, ``_write_episode``, ``_sim_state``,
``_set_sim_state``, ``sim_state_size``.
"""

from __future__ import annotations

from types import SimpleNamespace

import mujoco
import numpy as np
import torch

from envs import rng
from envs.base import ObsSpec
from envs.mujoco import scene, step_logic
from envs.mujoco.config import TaskConfig
from envs.mujoco.observations import ObservationManager
from envs.mujoco.tasks import make_task

ACTION_DIM = 5  # dx, dy, dz, dyaw, gripper (> 0 closes)


def gripper_joint_ranges() -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the x, y, z, yaw joints, read from the one gripper MJCF both simulators use."""
    model = mujoco.MjModel.from_xml_string(scene.build_gripper_mjcf())
    return model.jnt_range[:4, 0].copy(), model.jnt_range[:4, 1].copy()


class GripperTaskEnv:
    # Task-state fields packed after the simulator's state by get_state: name -> width per object (O) or 1.
    # base_seed_*: the run's seed that each env's future episode seeds derive from. It is state, not
    # config: a resumed run must draw the same next episodes as the uninterrupted one.
    _SCALARS = ("step", "attempt", "episode_index", "seed_lo", "seed_hi", "hold_count", "drop_left",
                "noise_left", "closed", "ep_return", "ever_touched", "base_seed_lo", "base_seed_hi")
    _PER_OBJECT = ("occl_left", "revealed", "held_prev", "grasp_z", "release_wait", "half", "mass", "friction",
                   "static")
    sim_state_size: int  # values of the simulator's own state per env (set by the subclass)

    def _init_task(self, cfg: TaskConfig, device: str) -> None:
        """Everything but the physics; the subclass builds its simulator, then calls ``_finish_init``."""
        self.cfg = cfg
        self.num_envs = N = cfg.num_envs
        self.device = torch.device(device)
        self.num_actions = ACTION_DIM
        self.max_episode_length = cfg.episode_length
        self.n_cubes = cfg.n_cubes
        self.n_objects = O = cfg.n_cubes + int(cfg.has_base)
        self.task = make_task(cfg)
        self.scene_spec = scene.SceneSpec(cfg.n_cubes, cfg.has_base, cfg.cube.half_size[1], cfg.timestep)
        self._qadr = 6 + 7 * np.arange(O)  # each object's 7 values follow the 6 gripper joints
        self._vadr = 6 + 6 * np.arange(O)
        self._jnt_lo, self._jnt_hi = gripper_joint_ranges()
        self.obs_manager = ObservationManager(cfg.observations, cfg.n_cubes, cfg.has_base)
        self.obs_spec: ObsSpec = self.obs_manager.spec
        self._qpos = np.zeros((N, 6 + 7 * O))
        self._qvel = np.zeros((N, 6 + 6 * O))
        self._ctrl = np.zeros((N, 6))
        self._kick = np.zeros((N, O, 3))
        self._kicked: set[int] = set()  # envs with a push this step
        self._unstable = np.zeros(N, bool)
        self.target = np.zeros((N, 4))  # x, y, z, yaw position targets of the arm servos
        self.st = {k: np.zeros(N) for k in self._SCALARS}
        self.st.update({k: np.zeros((N, O)) for k in self._PER_OBJECT})
        # The step counter lives in a torch int64 tensor; st["step"] is its numpy view (shared memory),
        # so Isaac Lab-style in-place writes to episode_length_buf reach the task logic. Never rebind it.
        self._episode_length_buf = torch.zeros(N, dtype=torch.int64)
        self.st["step"] = self._episode_length_buf.numpy()
        self._set_seed("base_seed", slice(None), int(cfg.seed))

    def _finish_init(self) -> None:
        self.reset(seed=self.cfg.seed)  # ready to step once built: every env in its first scene, as reset() draws it

    # ------------------------------------------------------------------ seeds and state views
    def _seed(self, name: str) -> np.ndarray:
        """(N,) uint64 seed kept in st as two exact 32-bit halves ``name_lo``, ``name_hi`` (float64 state)."""
        return (self.st[f"{name}_hi"].astype(np.uint64) << np.uint64(32)) | self.st[f"{name}_lo"].astype(np.uint64)

    def _set_seed(self, name: str, ids, seed) -> None:
        seed = np.asarray(seed, dtype=np.uint64)
        self.st[f"{name}_lo"][ids] = (seed & np.uint64(0xFFFFFFFF)).astype(np.float64)
        self.st[f"{name}_hi"][ids] = (seed >> np.uint64(32)).astype(np.float64)

    @property
    def seeds(self) -> np.ndarray:
        """(N,) uint64 seed of each env's current episode."""
        return self._seed("seed")

    @property
    def base_seeds(self) -> np.ndarray:
        """(N,) uint64 run seed of each env: its next episodes' seeds derive from it (see ``reset``)."""
        return self._seed("base_seed")

    @property
    def episode_length_buf(self) -> torch.Tensor:
        """Steps taken in the current episode, (N,) int64 on the CPU: the env's own counter, so in-place
        writes (``buf[ids] = k``) take effect; PPO may randomise it once to desynchronise resets."""
        return self._episode_length_buf

    @episode_length_buf.setter
    def episode_length_buf(self, value) -> None:
        # Copy into the buffer (rsl_rl assigns a fresh tensor): rebinding would split it from st["step"].
        self._episode_length_buf[:] = torch.as_tensor(value).to(device="cpu", dtype=torch.int64)

    # ------------------------------------------------------------------ simulator hooks
    def _physics_step(self) -> None:
        """Advance every env by one control step (``cfg.substeps`` physics steps) with the servo
        targets ``_ctrl`` (N, 6) and the pushes ``_kick`` (N, O, 3) m/s added to the objects' linear
        velocity before it (envs ``_kicked``); fill ``_qpos``, ``_qvel`` and ``_unstable`` (N,) bool."""
        raise NotImplementedError

    def _read_data(self, ids) -> None:
        """Fill rows ``ids`` of ``_qpos`` / ``_qvel`` from the simulator."""
        raise NotImplementedError

    def _apply_hidden(self, i: int) -> None:
        """Give env i's objects the hidden parameters in ``st`` (half, mass, friction)."""
        raise NotImplementedError

    def _write_episode(self, i, xy, yaw, half, grip, static) -> None:
        """Put env i in its episode's first state: gripper at ``grip`` with yaw 0 and open fingers,
        object o at (xy[o], half) with yaw[o], welded where ``static[o]``; then ``_reset_task_state(i)``."""
        raise NotImplementedError

    def _episode_qpos(self, xy, yaw, half, grip) -> np.ndarray:
        """(6 + 7 O,) the episode's first ``_qpos`` row, the layout both simulators write: the gripper at
        ``grip`` with yaw 0 and open fingers, object o resting at (xy[o], half) turned by yaw[o] (wxyz)."""
        q = np.zeros(6 + 7 * self.n_objects)
        q[0:3] = grip
        q[4:6] = scene.FINGER_OPEN
        for o in range(self.n_objects):
            a = self._qadr[o]
            q[a: a + 3] = [xy[o, 0], xy[o, 1], half]
            q[a + 3: a + 7] = [np.cos(yaw[o] / 2), 0.0, 0.0, np.sin(yaw[o] / 2)]
        return q

    def _commit_writes(self, ids: np.ndarray) -> None:
        """Called once after ``_write_episode`` of envs ``ids``: a simulator that batches its writes sends
        them here. (MuJoCo writes each env's MjData directly: nothing to do.)"""

    def _sim_state(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), sim_state_size) float64: the simulator's whole state of those envs."""
        raise NotImplementedError

    def _set_sim_state(self, ids: np.ndarray, states: np.ndarray) -> None:
        """Restore ``_sim_state`` rows (``st`` already holds the envs' task state and hidden parameters)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ frame: everything task logic reads
    def _frame(self) -> SimpleNamespace:
        N, C = self.num_envs, self.n_cubes
        q, v, st = self._qpos, self._qvel, self.st
        obj_pos = np.stack([q[:, a: a + 3] for a in self._qadr], 1)
        quat = np.stack([q[:, a + 3: a + 7] for a in self._qadr], 1)
        w, x, y, z = quat[..., 0], quat[..., 1], quat[..., 2], quat[..., 3]
        f = SimpleNamespace(
            n_envs=N, n_cubes=C, seeds=self.seeds, steps=st["step"].astype(np.uint64),
            grip_pos=q[:, 0:3], grip_yaw=q[:, 3], fingers=q[:, 4:6], grip_vel=v[:, 0:3],
            closed=st["closed"] > 0, obj_pos=obj_pos,
            obj_yaw=np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)),
            obj_vel=np.stack([v[:, a: a + 3] for a in self._vadr], 1),
            half=st["half"], mass=st["mass"], friction=st["friction"], static=st["static"] > 0,
            time_frac=st["step"] / self.cfg.episode_length,
        )
        f.held = self._held(f)
        self.refresh_flags(f)
        return f

    def refresh_flags(self, f) -> None:
        """Re-derive the frame's task flags after the step logic updated occlusion and revealed state."""
        st = self.st
        f.visible = st["occl_left"] == 0
        f.known = np.ones_like(f.static) if self.cfg.hidden_view == "omniscient" else st["revealed"] > 0
        f.known_static = f.static & f.known

    def _held(self, f) -> np.ndarray:
        """(N, O) bool: the closed fingers rest on a cube that sits between them. Geometric, no contacts."""
        d = f.obj_pos - f.grip_pos[:, None, :]
        c, s = np.cos(f.grip_yaw)[:, None], np.sin(f.grip_yaw)[:, None]
        along_pads, across = c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]
        margin = f.half + 0.012
        inside = (np.abs(along_pads) < margin) & (np.abs(across) < margin) & (np.abs(d[..., 2]) < margin)
        touching = (f.fingers.min(1)[:, None] > 0.004) & (f.fingers.max(1)[:, None] < f.half + 0.008)
        held = f.closed[:, None] & inside & touching
        if self.cfg.has_base:
            held[:, self.n_cubes] = False  # the base is never the object being manipulated
        return held

    # ------------------------------------------------------------------ reset
    def _sample_episode(self, i: int) -> None:
        """Draw the scene and hidden parameters of env i's next episode from its episode seed."""
        cfg, O, C, st = self.cfg, self.n_objects, self.n_cubes, self.st
        seed = rng.episode_seed(self.base_seeds[i], np.array([i]), np.array([int(st["episode_index"][i])]))
        self._set_seed("seed", i, seed[0])
        st["episode_index"][i] += 1
        zero = np.zeros(1, np.uint64)
        u = rng.uniform(seed, zero, rng.HIDDEN, 4 * O + 8).reshape(-1)

        def lerp(rng_pair, x):
            return rng_pair[0] + (rng_pair[1] - rng_pair[0]) * x

        half = lerp(cfg.cube.half_size, u[0])  # one size per episode: the tower's levels stay even
        st["half"][i] = half
        st["mass"][i] = lerp(cfg.cube.mass, u[1: 1 + O])
        st["friction"][i] = lerp(cfg.cube.friction, u[1 + O: 1 + 2 * O])
        static = u[1 + 2 * O: 1 + 3 * O] < cfg.cube.static_prob
        static[C:] = False
        if cfg.cube.static_count is not None:  # exactly k welded: a uniform k-subset, own counter (2)
            key = rng.uniform(seed, np.full(1, 2, np.uint64), rng.HIDDEN, C)[0]
            static[:C] = False
            static[np.argsort(key)[: cfg.cube.static_count]] = True
        missing = max(cfg.n_stack, 1) - int((~static[:C]).sum())
        if missing > 0:  # the env guarantees enough liftable cubes to solve the task
            # Free a uniformly drawn subset of the welded cubes, not the lowest indices: otherwise the
            # cube's index alone would tell which cubes are likelier to lift. Own counter (1), so the
            # other draws of the episode stay what they were.
            key = rng.uniform(seed, np.ones(1, np.uint64), rng.HIDDEN, C)[0]
            welded = np.nonzero(static[:C])[0]
            static[welded[np.argsort(key[welded])[:missing]]] = False
        st["static"][i] = static
        if cfg.has_base:  # a heavier base stays where it is put
            st["mass"][i, C] = max(cfg.cube.mass[1], 0.3)
        xy = self._sample_layout(seed)
        yaw = lerp((-np.pi / 4, np.pi / 4), u[1 + 3 * O: 1 + 4 * O])
        grip = np.array(cfg.layout.gripper_start) + cfg.layout.gripper_start_noise * (2 * u[-3:] - 1)
        self._write_episode(i, xy, yaw, half, grip, static)

    def _sample_layout(self, seed: np.ndarray) -> np.ndarray:
        """Cube xy positions at least ``min_separation`` apart, by deterministic rejection sampling."""
        L, O = self.cfg.layout, self.n_objects
        cand = (2 * rng.uniform(seed, np.zeros(1, np.uint64), rng.SCENE, 2 * 64).reshape(64, 2) - 1) * L.xy_range
        chosen: list[np.ndarray] = []
        for p in cand:
            if all(np.linalg.norm(p - c) >= L.min_separation for c in chosen):
                chosen.append(p)
                if len(chosen) == O:
                    return np.array(chosen)
        raise RuntimeError("could not place the cubes; the layout config is too tight")  # guarded by config checks

    def _reset_task_state(self, i: int) -> None:
        st = self.st
        for k in ("step", "attempt", "hold_count", "drop_left", "noise_left", "closed", "ep_return", "ever_touched"):
            st[k][i] = 0
        for k in ("occl_left", "revealed", "held_prev", "grasp_z", "release_wait"):
            st[k][i] = 0

    def reset_envs(self, env_ids) -> None:
        ids = np.asarray(env_ids, dtype=int)
        for i in ids:
            self._sample_episode(int(i))
        self._commit_writes(ids)
        self._read_data(ids)

    def reset(self, seed: int | None = None) -> dict[str, torch.Tensor]:
        if seed is not None:
            self._set_seed("base_seed", slice(None), int(seed))
            self.st["episode_index"][:] = 0
        self.reset_envs(np.arange(self.num_envs))
        return self.get_observations()

    def get_observations(self) -> dict[str, torch.Tensor]:
        return self._to_torch(self.obs_manager.compute(self._frame()))

    def _to_torch(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v).to(self.device) for k, v in obs.items()}

    # ------------------------------------------------------------------ step
    def step(self, action: torch.Tensor):
        """See envs/base.py; the per-step task logic reads top to bottom in step_logic.py."""
        return step_logic.step(self, action)

    # ------------------------------------------------------------------ full state
    @property
    def state_size(self) -> int:
        return self.sim_state_size + 4 + len(self._SCALARS) + len(self._PER_OBJECT) * self.n_objects

    def get_state(self, env_ids=None) -> torch.Tensor:
        ids = np.arange(self.num_envs) if env_ids is None else np.asarray(torch.as_tensor(env_ids).cpu(), int)
        ids = ids.reshape(-1)
        task = np.concatenate([self.target[ids]] + [self.st[k][ids][:, None] for k in self._SCALARS]
                              + [self.st[k][ids] for k in self._PER_OBJECT], axis=1)
        return torch.from_numpy(np.concatenate([self._sim_state(ids), task], axis=1))

    def set_state(self, env_ids, states, keep_episode_counter: bool = False) -> None:
        """Restore full states. ``keep_episode_counter`` keeps each env's own episode count and base
        seed, so an env started from a borrowed state (a demonstration's) still draws its own fresh
        scenes afterwards: a borrowed state does not move the env's seed stream."""
        ids = np.asarray(torch.as_tensor(env_ids).cpu(), int).reshape(-1)
        states = np.asarray(torch.as_tensor(states, dtype=torch.float64).cpu()).reshape(len(ids), -1)
        if states.shape[1] != self.state_size:
            raise ValueError(f"state has {states.shape[1]} values; this env's states have {self.state_size} "
                             f"(a state from another task, scene or simulator?)")
        O, S = self.n_objects, self.sim_state_size
        own = ("episode_index", "base_seed_lo", "base_seed_hi")
        kept = {k: self.st[k][ids].copy() for k in own}
        self.target[ids] = states[:, S: S + 4]
        pos = S + 4
        for k in self._SCALARS:
            self.st[k][ids] = states[:, pos]
            pos += 1
        for k in self._PER_OBJECT:
            self.st[k][ids] = states[:, pos: pos + O]
            pos += O
        self._set_sim_state(ids, states[:, :S])
        if keep_episode_counter:
            for k in own:
                self.st[k][ids] = kept[k]
        self._read_data(ids)

    def active_perturbations(self) -> dict[str, torch.Tensor]:
        """(N,) bool per kind (drop, push, noise): an injected failure that will act in the next step
        although it started earlier. ``extras["perturbations"]`` marks only the step one starts; a drop
        keeps the gripper open for ``drop_steps`` steps and a burst noises ``noise_steps`` actions (a
        push acts in its start step only). Read before ``step``: a step acted under a perturbation if
        one was active here or ``extras["perturbations"]`` says one started in it."""
        return {"drop": torch.from_numpy(self.st["drop_left"] > 0),
                "push": torch.zeros(self.num_envs, dtype=torch.bool),
                "noise": torch.from_numpy(self.st["noise_left"] > 0)}
