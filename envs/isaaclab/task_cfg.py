"""Our gripper tasks as Isaac Lab scenes (``ManagerBasedRLEnvCfg``), built from the same ``TaskConfig``.

The scene: the gripper USD (``assets.gripper_usd``, converted from the MuJoCo tasks' MJCF) with one
implicit PD actuator per joint at the MJCF servos' gains (``scene.GRIPPER_SERVOS``: actuator gains do
not survive the conversion), the movable cubes and the stack base as rigid cuboids, and the table as a
static collider, all from Isaac Lab's shape spawners. Physics: Newton with the MuJoCo Warp solver,
semi-implicit Euler and an elliptic cone with impratio 10, as the MuJoCo scenes (envs/mujoco/scene.py
says why), at the task's ``timestep``; one control step is ``substeps`` physics steps.

The managers are the minimum that makes this a working Isaac Lab env on its own (joint-position
actions, joint observations, a time-out): ``IsaacLabTaskEnv`` steps the scene itself and computes
reward, success, attempts and observations with the MuJoCo tasks' task logic.
"""

from __future__ import annotations

from pathlib import Path

from envs.mujoco import scene
from envs.mujoco.config import TaskConfig

TABLE_FRICTION = 0.5  # the MJCF table's


def object_names(cfg: TaskConfig) -> list[str]:
    return scene.cube_names(scene.SceneSpec(cfg.n_cubes, cfg.has_base))


def build_env_cfg(cfg: TaskConfig, usd_path: Path, sim_device: str = "cpu"):
    """A ``ManagerBasedRLEnvCfg`` of ``cfg``'s scene with ``cfg.num_envs`` envs on ``sim_device``."""
    import isaaclab.envs.mdp as mdp
    import isaaclab.sim as sim_utils
    from isaaclab.actuators import ImplicitActuatorCfg
    from isaaclab.assets import ArticulationCfg, AssetBaseCfg, RigidObjectCfg
    from isaaclab.envs import ManagerBasedRLEnvCfg
    from isaaclab.managers import ObservationGroupCfg, ObservationTermCfg, SceneEntityCfg, TerminationTermCfg
    from isaaclab.scene import InteractiveSceneCfg
    from isaaclab.utils import configclass
    from isaaclab_newton.physics import MJWarpSolverCfg, NewtonCfg

    size = 2.0 * cfg.cube.half_size[0]
    t = scene.SceneSpec().table_half_extent

    def cube(k: int, name: str) -> RigidObjectCfg:
        return RigidObjectCfg(
            prim_path="{ENV_REGEX_NS}/" + name,
            spawn=sim_utils.CuboidCfg(
                size=(size, size, size), rigid_props=[sim_utils.UsdPhysicsRigidBodyCfg()],
                mass_props=[sim_utils.MassCfg(mass=0.1)],
                collision_props=[sim_utils.UsdPhysicsCollisionCfg(collision_enabled=True)]),
            init_state=RigidObjectCfg.InitialStateCfg(pos=(0.08 * k, 0.0, size / 2)),  # each episode places them
        )

    @configclass
    class SceneCfg(InteractiveSceneCfg):
        gripper = ArticulationCfg(
            prim_path="{ENV_REGEX_NS}/Gripper",
            # (the MJCF's gravity compensation is a wrench in IsaacLabTaskEnv: on Newton a body's
            # disable_gravity switches gravity off for the whole scene)
            spawn=sim_utils.UsdFileCfg(usd_path=str(usd_path)),
            init_state=ArticulationCfg.InitialStateCfg(joint_pos={"z": cfg.layout.gripper_start[2]}),
            actuators={j: ImplicitActuatorCfg(joint_names_expr=[j], stiffness=float(kp), damping=float(kv))
                       for j, (kp, kv, _) in scene.GRIPPER_SERVOS.items()},
        )
        table = AssetBaseCfg(
            prim_path="{ENV_REGEX_NS}/Table",
            spawn=sim_utils.CuboidCfg(
                size=(2 * t, 2 * t, 0.04), collision_props=[sim_utils.UsdPhysicsCollisionCfg(collision_enabled=True)],
                physics_material=sim_utils.RigidBodyMaterialCfg(static_friction=TABLE_FRICTION,
                                                                dynamic_friction=TABLE_FRICTION)),
            init_state=AssetBaseCfg.InitialStateCfg(pos=(0.0, 0.0, -0.02)),
        )

    @configclass
    class ObservationsCfg:
        @configclass
        class PolicyCfg(ObservationGroupCfg):
            joint_pos = ObservationTermCfg(func=mdp.joint_pos, params={"asset_cfg": SceneEntityCfg("gripper")})

        policy = PolicyCfg()

    @configclass
    class ActionsCfg:
        joints = mdp.JointPositionActionCfg(asset_name="gripper", joint_names=list(scene.GRIPPER_JOINTS),
                                            scale=1.0, use_default_offset=False, preserve_order=True)

    @configclass
    class TerminationsCfg:
        time_out = TerminationTermCfg(func=mdp.time_out, time_out=True)

    @configclass
    class GripperTaskCfg(ManagerBasedRLEnvCfg):
        scene = SceneCfg(num_envs=cfg.num_envs, env_spacing=1.0)
        observations = ObservationsCfg()
        actions = ActionsCfg()
        terminations = TerminationsCfg()
        rewards = None

        def __post_init__(self):
            self.decimation = cfg.substeps
            self.sim.render_interval = cfg.substeps  # nothing renders kit-less; one render per step if anything
            self.episode_length_s = cfg.episode_length * cfg.control_dt
            self.seed = cfg.seed
            for k, name in enumerate(object_names(cfg)):  # the scene's entities: any attribute of its cfg
                setattr(self.scene, name, cube(k, name))
            self.sim.dt = cfg.timestep
            self.sim.device = sim_device
            self.sim.physics = NewtonCfg(
                solver_cfg=MJWarpSolverCfg(cone="elliptic", impratio=10.0, integrator="euler"),
                use_cuda_graph=sim_device != "cpu")

    return GripperTaskCfg()


# ------------------------------------------------------------------ gymnasium registration
# Our tasks as Isaac Lab task ids (what `gym.make` and Isaac Lab's own scripts take), each built from its
# configs/env yaml with seed 0. Through envs/isaaclab/adapter.IsaacLabVecEnv they step with Isaac Lab's
# managers (joint-position actions, a time-out); IsaacLabTaskEnv adds the tasks' own reward and success.
TASK_IDS = {"RetryImitation-Lift-v1": "lift", "RetryImitation-PickLoose-v1": "pick_loose",
            "RetryImitation-Stack-v1": "stack", "RetryImitation-StackPickMulti-v1": "stack_pick_multi"}
_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "env"


def yaml_env_cfg(name: str):
    """The Isaac Lab env cfg of configs/env/<name>.yaml (seed 0)."""
    from omegaconf import OmegaConf

    from envs.isaaclab import assets
    from envs.mujoco.config import parse_task_config

    data = OmegaConf.load(_CONFIGS / f"{name}.yaml")
    data.seed = 0
    data = OmegaConf.to_container(data, resolve=True)
    sim_device = data.pop("sim_device", "cpu")
    data.pop("simulator", None)
    return build_env_cfg(parse_task_config(data), assets.gripper_usd(), sim_device)


def lift_cfg():
    return yaml_env_cfg("lift")


def pick_loose_cfg():
    return yaml_env_cfg("pick_loose")


def stack_cfg():
    return yaml_env_cfg("stack")


def stack_pick_multi_cfg():
    return yaml_env_cfg("stack_pick_multi")


def register_tasks() -> None:
    """Register TASK_IDS with gymnasium (idempotent)."""
    import gymnasium as gym

    for task_id, name in TASK_IDS.items():
        if task_id not in gym.registry:
            gym.register(id=task_id, entry_point="isaaclab.envs:ManagerBasedRLEnv", disable_env_checker=True,
                         kwargs={"env_cfg_entry_point": f"{__name__}:{name}_cfg"})
