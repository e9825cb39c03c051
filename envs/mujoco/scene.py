"""MJCF source of the built-in scenes: a table, a floating parallel-jaw gripper and cubes.

One function writes the whole model from a few numbers, so every task shares one robot. The gripper
is built to convert cleanly to USD for Isaac Lab (see shared/isaaclab-3.0-notes.md): one small body
per axis (``x_link``, ``y_link``, ``z_link``, ``yaw_link``, ``finger_left_link``,
``finger_right_link``), and body names that differ from joint names
(``x, y, z, yaw, finger_left, finger_right``).

Grasp physics that proved stable in a probe: gravity compensation on every gripper body (otherwise z
sags), a palm that does not collide, finger position servos with a full-close target, condim 3. Measured
here on a grid of cube masses (0.05 to 0.35 kg) and frictions (0.5 to 1.2) with carry-and-rotate
moves: pyramidal cones with a 200 stiffness held 10/24 and let fast yaw moves fling the cube; an
elliptic cone with impratio 10 and stiffness 500 (about 10 N squeeze) held 23/24, failing only for
heavy and slippery cubes, which is the hidden difficulty we want. Yaw has armature so that a yaw step
does not spin the held cube out of the pads. Cube geoms have priority 1 so a contact takes the cube's
friction: that makes "slippery" a property of the cube. The z joint stops 12 mm above the table so
the pads cannot pinch a cube against the table top (a trained PPO policy that pressed down while
closing launched cubes off the table). Damping the fingers harder (kv 20) helped corner grasps in a
probe but slowed the release so much that placed cubes were dragged off the tower: kv stays 5.

Integrator: semi-implicit Euler (implicit in joint damping only). With ``implicitfast`` a cube that
slipped a little between closing pads could gain hundreds of rad/s in one substep and leave the
table: that was almost every failure of a trained Lift teacher (15 of 128 episodes). Replaying the
last four control steps before nine such launches from saved states: implicitfast launched 8,
half the timestep 5, Euler 3 (those states were already half-way out). Run from the start with
Euler, the same checkpoint lost no cube in 128 episodes (87.5% -> 98.4% success). Every servo is
explicitly stable at this timestep (kv dt / m <= 0.8, kp dt^2 / m <= 0.25).

Static cubes: each cube has a mocap "anchor" and a weld equality between them, inactive by default.
Welding a cube is per MjData (``eq_active`` and ``mocap_pos`` are data, not model), so envs that share
one model can differ.
"""

from __future__ import annotations

from dataclasses import dataclass

# Joint order of the gripper in qpos/qvel/ctrl; the env relies on it.
GRIPPER_JOINTS = ("x", "y", "z", "yaw", "finger_left", "finger_right")
FINGER_OPEN = 0.045  # m, each finger's distance from the centre line when open
CUBE_COLORS = ("0.85 0.25 0.2 1", "0.2 0.55 0.85 1", "0.3 0.75 0.3 1", "0.9 0.75 0.2 1",
               "0.65 0.35 0.8 1", "0.95 0.5 0.15 1")
BASE_COLOR = "0.45 0.45 0.45 1"


@dataclass(frozen=True)
class SceneSpec:
    """What varies between tasks' scenes. Per-episode values (sizes, masses) are set by the env."""

    n_cubes: int = 1  # movable cubes
    has_base: bool = False  # a base cube to stack on (the last free body)
    cube_half_size: float = 0.02  # nominal; the env may rescale per episode
    timestep: float = 0.005
    table_half_extent: float = 0.3


def cube_names(spec: SceneSpec) -> list[str]:
    names = [f"cube{i}" for i in range(spec.n_cubes)]
    return names + (["base"] if spec.has_base else [])


def _cube_xml(name: str, color: str, h: float, x: float) -> str:
    # Cubes start side by side; the env places them at reset.
    return f"""
    <body name="{name}" pos="{x:.3f} 0 {h}">
      <freejoint name="{name}_free"/>
      <geom name="{name}_geom" type="box" size="{h} {h} {h}" mass="0.1" rgba="{color}"
            friction="1.0 0.005 0.0001" class="object"/>
    </body>
    <body name="{name}_anchor" mocap="true" pos="{x:.3f} 0 {h}"/>"""


# The gripper and its servos, shared by the task scenes and the gripper-only model that is converted to
# USD for Isaac Lab (build_gripper_mjcf): one robot definition for both simulators.
_DEFAULTS = """  <default>
    <geom condim="3"/>
    <default class="object"><geom condim="3" priority="1"/></default>
    <default class="pad"><geom condim="3" friction="1.5 0.005 0.0001" rgba="0.15 0.15 0.15 1"/></default>
    <default class="visual"><geom contype="0" conaffinity="0" group="1"/></default>
  </default>"""

_GRIPPER_BODY = f"""    <body name="x_link" pos="0 0 0" gravcomp="1">
      <joint name="x" type="slide" axis="1 0 0" range="-0.25 0.25" damping="5"/>
      <inertial pos="0 0 0" mass="0.2" diaginertia="1e-4 1e-4 1e-4"/>
      <body name="y_link" gravcomp="1">
        <joint name="y" type="slide" axis="0 1 0" range="-0.25 0.25" damping="5"/>
        <inertial pos="0 0 0" mass="0.2" diaginertia="1e-4 1e-4 1e-4"/>
        <body name="z_link" gravcomp="1">
          <joint name="z" type="slide" axis="0 0 1" range="0.012 0.35" damping="5"/>
          <inertial pos="0 0 0" mass="0.2" diaginertia="1e-4 1e-4 1e-4"/>
          <body name="yaw_link" gravcomp="1">
            <joint name="yaw" type="hinge" axis="0 0 1" range="-3.2 3.2" damping="0.05" armature="0.002"/>
            <inertial pos="0 0 0.06" mass="0.2" diaginertia="4e-4 4e-4 4e-4"/>
            <site name="grasp" pos="0 0 0" size="0.006" rgba="1 0 0 0.5" group="2"/>
            <geom name="palm" type="box" size="0.012 0.06 0.01" pos="0 0 0.065" rgba="0.3 0.3 0.35 1" class="visual"/>
            <body name="finger_left_link" gravcomp="1">
              <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_OPEN}" damping="1"/>
              <inertial pos="0 0.005 0.02" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
              <geom name="pad_left" type="box" size="0.01 0.005 0.03" pos="0 0.005 0.02" class="pad"/>
            </body>
            <body name="finger_right_link" gravcomp="1">
              <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_OPEN}" damping="1"/>
              <inertial pos="0 -0.005 0.02" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
              <geom name="pad_right" type="box" size="0.01 0.005 0.03" pos="0 -0.005 0.02" class="pad"/>
            </body>
          </body>
        </body>
      </body>
    </body>"""

# Position servos of the gripper joints: joint -> (kp, kv, ctrlrange). MJCF actuator gains do not carry
# over to USD, so the Isaac Lab task builds its actuators from this table too.
GRIPPER_SERVOS = {
    "x": (1500, 60, "-0.25 0.25"),
    "y": (1500, 60, "-0.25 0.25"),
    "z": (2500, 80, "0.012 0.35"),
    "yaw": (2, 0.12, "-3.2 3.2"),
    "finger_left": (500, 5, f"0 {FINGER_OPEN}"),
    "finger_right": (500, 5, f"0 {FINGER_OPEN}"),
}
_GRIPPER_ACTUATORS = "  <actuator>\n" + "".join(
    f'    <position name="{j}" joint="{j}" kp="{kp}" kv="{kv}" ctrlrange="{r}"/>\n'
    for j, (kp, kv, r) in GRIPPER_SERVOS.items()) + "  </actuator>"


def build_gripper_mjcf() -> str:
    """The gripper alone (no table, cubes or lights): the source of the USD that Isaac Lab spawns
    (envs/isaaclab/assets.py). Its servo gains do not carry over to USD; the Isaac Lab task sets
    its actuators from ``GRIPPER_SERVOS``."""
    return f"""<mujoco model="retry_gripper">
  <compiler angle="radian" autolimits="true"/>
{_DEFAULTS}
  <worldbody>
{_GRIPPER_BODY}
  </worldbody>
  <contact>
    <exclude body1="finger_left_link" body2="finger_right_link"/>
  </contact>
{_GRIPPER_ACTUATORS}
</mujoco>
"""


def build_mjcf(spec: SceneSpec) -> str:
    h = spec.cube_half_size
    names = cube_names(spec)
    cubes = "".join(
        _cube_xml(n, BASE_COLOR if n == "base" else CUBE_COLORS[i % len(CUBE_COLORS)], h, 0.08 * i)
        for i, n in enumerate(names)
    )
    welds = "".join(
        f'\n    <weld name="{n}_static" body1="{n}" body2="{n}_anchor" relpose="0 0 0 1 0 0 0" '
        f'active="false" solref="0.02 1"/>'
        for n in names
    )
    t = spec.table_half_extent
    return f"""<mujoco model="retry_gripper">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{spec.timestep}" integrator="Euler" cone="elliptic" impratio="10"/>
  <visual>
    <quality shadowsize="1024"/>
    <global offwidth="640" offheight="480"/>
  </visual>
{_DEFAULTS}
  <asset>
    <texture name="grid" type="2d" builtin="checker" width="256" height="256"
             rgb1="0.62 0.55 0.45" rgb2="0.58 0.51 0.42"/>
    <material name="table" texture="grid" texrepeat="6 6"/>
  </asset>
  <worldbody>
    <light pos="0 -0.4 1.2" dir="0 0.3 -1" diffuse="0.8 0.8 0.8"/>
    <camera name="front" pos="0 -0.55 0.38" xyaxes="1 0 0 0 0.55 0.85"/>
    <geom name="table" type="box" size="{t} {t} 0.02" pos="0 0 -0.02" material="table"
          friction="0.5 0.005 0.0001"/>
{_GRIPPER_BODY}{cubes}
  </worldbody>
  <equality>{welds}
  </equality>
  <contact>
    <exclude body1="finger_left_link" body2="finger_right_link"/>
  </contact>
{_GRIPPER_ACTUATORS}
</mujoco>
"""
