"""Our gripper tasks simulated by Isaac Lab 3.0 (kit-less, Newton / MuJoCo Warp), on CPU or GPU.

``IsaacLabTaskEnv`` is ``GripperTaskEnv`` (the MuJoCo tasks' task logic, unchanged) over an Isaac Lab
``ManagerBasedRLEnv`` of ``task_cfg.build_env_cfg``: the env steps the scene itself, as Isaac Lab's
own ``step`` does (``write_data_to_sim``, ``sim.step``, ``scene.update`` per physics step), and keeps
the state in MuJoCo's layout (``envs/task_env.py``): positions relative to each env's origin,
quaternions converted from Isaac Lab's xyzw to wxyz.

What the MuJoCo scene does with model features, done here by hand (docs/isaaclab.md):
- gravity compensation of the gripper (MJCF ``gravcomp``): a permanent upward wrench m g per body;
- a welded ("static") cube: its pose is written back to its anchor, velocity zero, before every
  physics step (MuJoCo: a weld equality);
- the cube's friction wins every contact (MuJoCo: geom priority): the gripper's shapes get friction
  0 and MuJoCo Warp combines a contact's friction as the larger of the two;
- hidden mass and friction are written per env at reset through Isaac Lab's setters; the cube size
  is one value per task (a per-episode size would need a new collision shape per env).
"""

from __future__ import annotations

import numpy as np
import torch

from envs.base import ConfigError
from envs.isaaclab import OPEN, assets, require_isaaclab, task_cfg
from envs.isaaclab import torch_view as _t
from envs.isaaclab import wxyz_to_xyzw as _xyzw
from envs.isaaclab import xyzw_to_wxyz as _wxyz
from envs.mujoco import scene
from envs.mujoco.config import TaskConfig
from envs.task_env import GripperTaskEnv


class IsaacLabTaskEnv(GripperTaskEnv):
    simulator = "isaaclab"

    def __init__(self, cfg: TaskConfig, device: str = "cpu", sim_device: str = "cpu"):
        require_isaaclab()
        lo, hi = cfg.cube.half_size
        if lo != hi:
            raise ConfigError(f"env.cube.half_size={[lo, hi]}: Isaac Lab tasks have one cube size; set both ends "
                              f"equal (e.g. env.cube.half_size=[{hi},{hi}])")
        self._init_task(cfg, device)
        from isaaclab.app.sim_launcher import launch_simulation
        from isaaclab.envs import ManagerBasedRLEnv

        env_cfg = task_cfg.build_env_cfg(cfg, assets.gripper_usd(), sim_device)
        # Kit-less for Newton: launch_simulation starts nothing, but it is the supported entry
        # (AppLauncher always needs Isaac Sim). Held open until close().
        self._launch = launch_simulation(env_cfg, {"headless": True})
        self._launch.__enter__()
        self.env = ManagerBasedRLEnv(env_cfg)
        OPEN["simulations"] += 1
        self.sim_device = torch.device(sim_device)
        sc = self.env.scene
        self._gripper = sc["gripper"]
        self._objects = [sc[n] for n in task_cfg.object_names(cfg)]
        self._origins = _t(sc.env_origins).detach().cpu().double().numpy()  # (N, 3)
        self.sim_state_size = self._qpos.shape[1] + self._qvel.shape[1]
        self._anchor = np.zeros((self.num_envs, self.n_objects, 7))  # welded objects' poses, local, wxyz
        self._all = torch.arange(self.num_envs, device=self.sim_device)
        self._zero_gripper_friction()
        self._compensate_gripper_gravity()
        self._finish_init()

    # ------------------------------------------------------------------ helpers
    def _to_sim(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=self.sim_device)

    def _ids(self, ids) -> torch.Tensor:
        return torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.sim_device)

    def _shape_friction(self, asset) -> torch.Tensor:
        import warp as wp

        model = self.env.sim.physics_manager.get_model()
        return wp.to_torch(asset._root_view.get_attribute("shape_material_mu", model)[:, 0])  # (N, shapes)

    def _model_changed(self) -> None:
        from newton import ModelFlags

        self.env.sim.physics_manager.add_model_change(ModelFlags.SHAPE_PROPERTIES)

    def _zero_gripper_friction(self) -> None:
        self._shape_friction(self._gripper)[:] = 0.0
        self._model_changed()

    def _compensate_gripper_gravity(self) -> None:
        """The MJCF's ``gravcomp="1"`` on every gripper body: a constant upward force m g on each. (Without
        it the z servo sags m g / kp = 2 mm under the gripper's weight.)"""
        mass = _t(self._gripper.data.body_mass).to(self.sim_device).float()  # (N, bodies)
        force = torch.zeros(*mass.shape, 3, device=self.sim_device)
        force[..., 2] = 9.81 * mass
        self._gripper.permanent_wrench_composer.set_forces_and_torques_index(forces=force, is_global=True)

    def _world_pose(self, ids: np.ndarray, local_wxyz: np.ndarray) -> torch.Tensor:
        """(n, 7) Isaac Lab root poses (world position, xyzw) from local wxyz poses of envs ``ids``."""
        pose = np.concatenate([local_wxyz[:, :3] + self._origins[ids], _xyzw(local_wxyz[:, 3:7])], axis=1)
        return self._to_sim(pose)

    # ------------------------------------------------------------------ physics
    def _welded_writes(self) -> list:
        """(object, env ids, anchor poses, zero velocities) of the welded objects: fixed within a step."""
        static, out = self.st["static"] > 0, []
        for o, obj in enumerate(self._objects):
            ids = np.nonzero(static[:, o])[0]
            if len(ids):
                out.append((obj, self._ids(ids), self._world_pose(ids, self._anchor[ids, o]),
                            self._to_sim(np.zeros((len(ids), 6)))))
        return out

    def _physics_step(self) -> None:
        env = self.env
        if self._kicked:
            ids = np.array(sorted(self._kicked))
            for o, obj in enumerate(self._objects):
                if self._kick[ids, o].any():
                    vel = self._qvel[ids, self._vadr[o]: self._vadr[o] + 6].copy()
                    vel[:, :3] += self._kick[ids, o]
                    obj.write_root_velocity_to_sim_index(root_velocity=self._to_sim(vel), env_ids=self._ids(ids))
        self._gripper.actuators.target_command.set_position_index(value=self._to_sim(self._ctrl))
        welded = self._welded_writes()
        for _ in range(self.cfg.substeps):
            for obj, tid, pose, zero in welded:  # a weld: back at the anchor before every physics step
                obj.write_root_pose_to_sim_index(root_pose=pose, env_ids=tid)
                obj.write_root_velocity_to_sim_index(root_velocity=zero, env_ids=tid)
            env.scene.write_data_to_sim()
            env.sim.step(render=False)
            env.scene.update(dt=env.physics_dt)
        self._read_data(np.arange(self.num_envs))
        self._unstable[:] = ~np.isfinite(self._qpos).all(1) | ~np.isfinite(self._qvel).all(1)

    def _read_data(self, ids) -> None:
        ids = np.asarray(ids, dtype=int)
        tid, g = self._ids(ids), self._gripper.data
        self._qpos[ids, :6] = _t(g.joint_pos)[tid].double().cpu().numpy()
        self._qvel[ids, :6] = _t(g.joint_vel)[tid].double().cpu().numpy()
        for o, obj in enumerate(self._objects):
            pose = _t(obj.data.root_pose_w)[tid].double().cpu().numpy()  # (n, 7) xyz, xyzw
            vel = _t(obj.data.root_vel_w)[tid].double().cpu().numpy()  # (n, 6) linear, angular
            a, v = self._qadr[o], self._vadr[o]
            self._qpos[ids, a: a + 3] = pose[:, :3] - self._origins[ids]
            self._qpos[ids, a + 3: a + 7] = _wxyz(pose[:, 3:7])
            self._qvel[ids, v: v + 6] = vel

    # ------------------------------------------------------------------ writes (batched per reset)
    def _apply_hidden(self, i: int) -> None:
        pass  # mass and friction of all reset envs go out together in _commit_writes

    def _write_episode(self, i, xy, yaw, half, grip, static) -> None:
        self._qpos[i] = self._episode_qpos(xy, yaw, half, grip)
        self._qvel[i] = 0.0
        self.target[i] = [grip[0], grip[1], grip[2], 0.0]
        self._ctrl[i] = [*self.target[i], scene.FINGER_OPEN, scene.FINGER_OPEN]
        self._reset_task_state(i)

    def _commit_writes(self, ids: np.ndarray) -> None:
        """Send rows ``ids`` of ``_qpos``/``_qvel``/``_ctrl`` and their hidden parameters to the sim."""
        tid = self._ids(ids)
        g = self._gripper
        g.write_joint_position_to_sim_index(position=self._to_sim(self._qpos[ids, :6]), env_ids=tid)
        g.write_joint_velocity_to_sim_index(velocity=self._to_sim(self._qvel[ids, :6]), env_ids=tid)
        g.actuators.target_command.set_position_index(value=self._to_sim(self._ctrl[ids]), env_ids=tid)
        st = self.st
        for o, obj in enumerate(self._objects):
            a, v = self._qadr[o], self._vadr[o]
            local = self._qpos[ids, a: a + 7]
            self._anchor[ids, o] = local
            obj.write_root_pose_to_sim_index(root_pose=self._world_pose(ids, local), env_ids=tid)
            obj.write_root_velocity_to_sim_index(root_velocity=self._to_sim(self._qvel[ids, v: v + 6]), env_ids=tid)
            mass = st["mass"][ids, o]
            obj.set_masses_index(masses=self._to_sim(mass[:, None]), env_ids=tid)
            h = st["half"][ids, o]
            inertia = np.zeros((len(ids), 1, 9))
            inertia[:, 0, [0, 4, 8]] = (mass * (2 * h) ** 2 / 6.0)[:, None]  # a solid cube's, as MuJoCo's
            obj.set_inertias_index(inertias=self._to_sim(inertia), env_ids=tid)
            self._shape_friction(obj)[tid] = self._to_sim(st["friction"][ids, o][:, None])
        self._model_changed()

    # ------------------------------------------------------------------ simulator state
    def _sim_state(self, ids: np.ndarray) -> np.ndarray:
        """Joint and object positions and velocities in MuJoCo's layout. MuJoCo Warp's solver warm
        start is not part of it, so a restored state continues to within solver tolerance, not bitwise."""
        return np.concatenate([self._qpos[ids], self._qvel[ids]], axis=1)

    def _set_sim_state(self, ids: np.ndarray, states: np.ndarray) -> None:
        nq = self._qpos.shape[1]
        self._qpos[ids] = states[:, :nq]
        self._qvel[ids] = states[:, nq:]
        fingers = np.where(self.st["closed"][ids] > 0, 0.0, scene.FINGER_OPEN)
        self._ctrl[ids] = np.concatenate([self.target[ids], fingers[:, None], fingers[:, None]], axis=1)
        self._commit_writes(ids)

    def render(self, env_id: int = 0, width: int = 320, height: int = 240) -> np.ndarray:
        from envs.mujoco.render import RenderUnavailable

        raise RenderUnavailable("rendering an Isaac Lab env is not supported (kit-less Newton has no camera here)")

    def close(self) -> None:
        if getattr(self, "env", None) is not None:
            self.env.close()
            self.env = None
            OPEN["simulations"] -= 1
            self._launch.__exit__(None, None, None)
