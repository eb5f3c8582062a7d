"""The simulated soft arms as MJCF: pseudo-rigid-body continuum arms hanging from a ceiling mount.

Each segment is a tapered silicone capsule joined to its parent by three spring-damper hinges (bend about x, bend
about y, twist about z). Two actuator layouts, both through a first-order lag (MuJoCo's `filter` dynamics), so `act`
is the actuator's filtered command:
- `chambers`: segment i's pneumatic chamber bends it about x (even i) or y (odd i), command in [-1, 1];
- `tendons`: the segments form sections; each section has tendons spaced around the backbone that pull only
  (command in [0, 1]) and bend every segment of their section towards their side.
Everything physical, the cameras and what the arm senses are fields of `ArmSpec`; `ARMS` names the built-in arms.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from softarm import arm
from softarm.layout import IMAGE_SLOTS, default_camera_slots

BASE_CAMERA_POS = (0.42, -0.52, 0.58)  # a fixed camera in front of the arm, looking at its workspace
SIDE_CAMERA_POS = (0.52, 0.42, 0.58)  # a second one a quarter turn around the arm: together they give depth
BASE_CAMERA_AIM = (0.0, 0.0, 0.28)


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    name: str
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)  # world frame (m); ignored for a wrist camera
    aim: tuple[float, float, float] | None = BASE_CAMERA_AIM  # the world point it looks at; None: at the tip, down
    fovy: float = 58.0  # vertical field of view, degrees

    @property
    def wrist(self) -> bool:
        return self.aim is None


# Three balls at fixed places for `choose`, reachable by the pneumatic arm under any payload (tests check it).
PNEUMATIC_CHOICES = {"red": (0.12, -0.10, -0.43), "green": (-0.14, -0.06, -0.44), "blue": (0.02, 0.13, -0.44)}


@dataclasses.dataclass(frozen=True)
class ArmSpec:
    num_segments: int = 10
    segment_length: float = 0.05  # m; the arm is 0.5 m long
    radius_base: float = 0.016  # m, tapering linearly to radius_tip
    radius_tip: float = 0.009
    density: float = 1100.0  # kg/m^3, silicone rubber
    bend_stiffness: float = 2.0  # N m / rad per hinge
    twist_stiffness: float = 6.0
    damping: float = 0.08  # N m s / rad
    actuator_torque: float = 0.8  # N m at full pressure: 0.4 rad of bend per segment without gravity
    actuator_lag: float = 0.1  # s, time constant of the pressure response
    mount_height: float = 0.65  # m above the floor
    timestep: float = 0.002  # s
    floor_height: float = 0.0  # m; raise it to make the arm touch the floor (contact tests)
    actuation: Literal["chambers", "tendons"] = "chambers"
    sections: int = 1  # tendons: the segments split into this many sections, each with its own tendons
    tendons_per_section: int = 3  # spaced evenly around the backbone
    cameras: tuple[CameraSpec, ...] = (
        CameraSpec("base", BASE_CAMERA_POS),
        CameraSpec("side", SIDE_CAMERA_POS),
        CameraSpec("tip", aim=None, fovy=75.0),
    )
    image_size: tuple[int, int] = (224, 224)  # (height, width) of every camera's frames, at most 640 x 640
    measured: tuple[str, ...] = arm.SCHEMA  # the node features the arm's sensors give (recorded, named in the file)
    choices: dict[str, tuple[float, float, float]] = dataclasses.field(default_factory=lambda: PNEUMATIC_CHOICES)

    @property
    def length(self) -> float:
        return self.num_segments * self.segment_length

    @property
    def num_actuators(self) -> int:
        return self.num_segments if self.actuation == "chambers" else self.sections * self.tendons_per_section

    @property
    def command_range(self) -> tuple[float, float]:
        return (-1.0, 1.0) if self.actuation == "chambers" else (0.0, 1.0)

    def section(self, i: int) -> int:
        """The tendon section segment i belongs to."""
        return i * self.sections // self.num_segments

    def tendon_angle(self, k: int) -> float:
        """Where tendon k of a section runs around the backbone (rad from the x bending axis)."""
        return 2 * math.pi * k / self.tendons_per_section

    def radius(self, i: int) -> float:
        return self.radius_base + (self.radius_tip - self.radius_base) * i / max(self.num_segments - 1, 1)

    def actuated_axis(self, i: int) -> int:
        """0 = x, 1 = y: segments alternate so that the arm can bend in 3-D."""
        return i % 2


_AXES = ("1 0 0", "0 1 0", "0 0 1")
BALL_COLORS = {"red": "0.9 0.1 0.1", "green": "0.1 0.75 0.2", "blue": "0.15 0.3 0.95"}
PARKED = (0.0, 0.0, -5.0)  # where an unused ball waits: under the floor, out of every view


def _vec(v) -> str:
    return " ".join(f"{x:.4f}" for x in v)


def _look_at(eye, aim) -> str:
    """MJCF `xyaxes` of a camera at `eye` looking at `aim` with world z up (MuJoCo cameras look along -z)."""
    forward = np.subtract(aim, eye) / np.linalg.norm(np.subtract(aim, eye))
    right = np.array([forward[1], -forward[0], 0.0])  # forward x world-up
    right /= np.linalg.norm(right)
    return f"{_vec(right)} {_vec(np.cross(right, forward))}"


def _segment(spec: ArmSpec, i: int, inner: str) -> str:
    length, radius = spec.segment_length, spec.radius(i)
    mass = spec.density * math.pi * radius**2 * length
    hinges = "".join(
        f'<joint name="seg{i}_{name}" type="hinge" axis="{_AXES[k]}" stiffness="{stiffness}" damping="{spec.damping}" '
        f'range="-1.2 1.2" limited="true"/>'
        for k, (name, stiffness) in enumerate(
            (("bx", spec.bend_stiffness), ("by", spec.bend_stiffness), ("tw", spec.twist_stiffness))
        )
    )
    # Colour runs from amber at the base to teal at the tip, so a camera can tell the arm's ends apart.
    t = i / max(spec.num_segments - 1, 1)
    rgba = f"{0.95 - 0.8 * t:.3f} {0.6 + 0.1 * t:.3f} {0.2 + 0.6 * t:.3f} 1"
    pos = "0 0 0" if i == 0 else f"0 0 {-length}"
    return (
        f'<body name="seg{i}" pos="{pos}">{hinges}'
        f'<geom name="seg{i}" type="capsule" fromto="0 0 0 0 0 {-length}" size="{radius}" mass="{mass:.5f}" '
        f'rgba="{rgba}" contype="2" conaffinity="1" friction="0.8 0.01 0.001"/>'
        f'<site name="node{i}" pos="0 0 {-length}" size="0.004" group="4"/>{inner}</body>'
    )


def _actuators(spec: ArmSpec) -> tuple[str, str]:
    """(MJCF tendons, MJCF actuators) of the arm's actuator layout."""
    lag = f'dyntype="filter" dynprm="{spec.actuator_lag}" gainprm="{spec.actuator_torque}"'
    if spec.actuation == "chambers":
        return "", "".join(
            f'<general name="act{i}" joint="seg{i}_{"bx" if spec.actuated_axis(i) == 0 else "by"}" {lag} '
            'ctrlrange="-1 1" ctrllimited="true"/>'
            for i in range(spec.num_segments)
        )
    tendons, actuators = [], []
    for s in range(spec.sections):
        segments = [i for i in range(spec.num_segments) if spec.section(i) == s]
        for k in range(spec.tendons_per_section):
            angle = spec.tendon_angle(k)
            coefs = "".join(
                f'<joint joint="seg{i}_bx" coef="{math.cos(angle):.6f}"/><joint joint="seg{i}_by" '
                f'coef="{math.sin(angle):.6f}"/>'
                for i in segments
            )
            tendons.append(f'<fixed name="tendon{s}_{k}">{coefs}</fixed>')
            actuators.append(f'<general name="act{len(actuators)}" tendon="tendon{s}_{k}" {lag} ctrlrange="0 1" '
                             'ctrllimited="true"/>')  # fmt: skip
    return f"<tendon>{''.join(tendons)}</tendon>", "".join(actuators)


def build_xml(spec: ArmSpec) -> str:
    """MJCF of the arm, a floor, coloured non-colliding balls (mocap targets) and the spec's cameras."""
    n = spec.num_segments
    # The last segment carries any wrist camera and a collar whose mass is the episode's payload (set at run time).
    collar = (
        f'<body name="payload" pos="0 0 {-spec.segment_length / 2}"><geom type="cylinder" '
        f'size="{spec.radius_tip + 0.005} 0.008" mass="0.001" rgba=".3 .3 .35 1" contype="0" conaffinity="0"/></body>'
    )
    wrist_cameras = "".join(
        f'<camera name="{c.name}" pos="0 0 {-spec.segment_length - 0.012}" xyaxes="1 0 0 0 1 0" fovy="{c.fovy:g}"/>'
        for c in spec.cameras
        if c.wrist
    )
    fixed_cameras = "\n    ".join(
        f'<camera name="{c.name}" pos="{_vec(c.pos)}" xyaxes="{_look_at(c.pos, c.aim)}" fovy="{c.fovy:g}"/>'
        for c in spec.cameras
        if not c.wrist
    )
    chain = collar + wrist_cameras
    for i in reversed(range(n)):
        chain = _segment(spec, i, chain)
    tendons, actuators = _actuators(spec)
    balls = "".join(
        f'<body name="ball_{color}" mocap="true" pos="{_vec(PARKED)}">'
        f'<geom type="sphere" size="0.018" rgba="{rgb} 1" contype="0" conaffinity="0"/></body>'
        for color, rgb in BALL_COLORS.items()
    )
    # Self-collision is off (segments: contype 2, conaffinity 1; the floor: contype 1, conaffinity 2); the mount has
    # contype 0 so the first segment does not fight a body welded to the world.
    return f"""
<mujoco model="soft_arm">
  <compiler angle="radian"/>
  <option timestep="{spec.timestep}" integrator="implicitfast"/>
  <visual><quality shadowsize="0"/><global offwidth="640" offheight="640"/></visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1=".82 .82 .78" rgb2=".68 .68 .64" width="256" height="256"/>
    <material name="grid" texture="grid" texrepeat="8 8"/>
    <texture name="sky" type="skybox" builtin="gradient" rgb1=".72 .78 .86" rgb2=".3 .32 .38" width="64" height="64"/>
  </asset>
  <worldbody>
    <light pos="0.4 -0.6 1.6" dir="-0.3 0.5 -1" diffuse="0.8 0.8 0.8" castshadow="false"/>
    <light pos="-0.5 0.5 1.4" dir="0.3 -0.3 -1" diffuse="0.4 0.4 0.4" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 {spec.floor_height}" size="1 1 0.05" material="grid"
          contype="1" conaffinity="2"/>
    <body name="mount" pos="0 0 {spec.mount_height}">
      <geom type="cylinder" size="0.04 0.015" pos="0 0 0.015" rgba=".25 .25 .3 1" contype="0" conaffinity="0"/>
      {chain}
    </body>
    {balls}
    {fixed_cameras}
  </worldbody>{tendons}
  <actuator>{actuators}</actuator>
</mujoco>
"""


# A second arm, unlike the first in every way a lab's arm may be: 6 stiffer segments in 3 sections, each section bent
# by 3 pull-only tendons at 120 degrees (9 actuators for 6 nodes), two fixed cameras with other names, places and a
# 240 x 320 frame, and shape sensing only (positions, orientations, curvatures: no velocities, per-segment command,
# actuator state or contact force).
TENDON_ARM = ArmSpec(
    num_segments=6,
    segment_length=0.07,
    radius_base=0.018,
    radius_tip=0.011,
    bend_stiffness=3.0,
    twist_stiffness=8.0,
    damping=0.1,
    actuator_torque=1.2,
    actuation="tendons",
    sections=3,
    tendons_per_section=3,
    cameras=(
        CameraSpec("front", (0.05, -0.80, 0.42), (0.0, 0.0, 0.32), fovy=42.0),
        CameraSpec("overhead", (0.40, 0.30, 1.05), (0.0, 0.0, 0.32), fovy=48.0),
    ),
    image_size=(240, 320),
    measured=tuple(n for n in arm.SCHEMA if n.startswith(("pos_", "quat_", "kappa_")) or n == "twist"),
    choices={"red": (0.10, -0.08, -0.36), "green": (-0.10, -0.06, -0.37), "blue": (0.0, 0.11, -0.37)},
)
# A third arm, a shorter prototype of the pneumatic one: 8 stiffer segments (0.44 m), one chamber each, two fixed
# cameras elsewhere than the pneumatic arm's (to its left and right) and a wrist camera, and other sensors: node
# positions, curvatures and chamber pressures (no orientations, velocities, commands or contact forces).
COMPACT_ARM = ArmSpec(
    num_segments=8,
    segment_length=0.055,
    radius_base=0.015,
    radius_tip=0.009,
    bend_stiffness=2.6,
    twist_stiffness=7.0,
    actuator_torque=0.85,
    cameras=(
        CameraSpec("left", (-0.55, -0.30, 0.50), (0.0, 0.0, 0.30), fovy=55.0),
        CameraSpec("right", (0.40, 0.50, 0.62), (0.0, 0.0, 0.30), fovy=55.0),
        CameraSpec("tip", aim=None, fovy=75.0),
    ),
    measured=tuple(n for n in arm.SCHEMA if n.startswith(("pos_", "kappa_")) or n in ("twist", "actuator_state")),
    choices={"red": (0.08, -0.07, -0.39), "green": (-0.11, -0.05, -0.39), "blue": (0.02, 0.11, -0.395)},
)
ARMS = {"pneumatic": ArmSpec(), "tendon": TENDON_ARM, "compact": COMPACT_ARM}
DEFAULT_ARM = "pneumatic"
# openpi's image slots <- an arm's cameras where the order of their names is not the right one: a fixed view, the
# wrist camera and a second fixed view (the two fixed ones together give depth), in the same slots on every arm that
# has them, so that a model of one arm meets the same kind of view in each slot on another. Other arms' cameras go
# to the slots in the order of their names, as `softarm convert` maps them by default.
CAMERA_SLOTS = {
    DEFAULT_ARM: {"base_0_rgb": "base", "left_wrist_0_rgb": "tip", "right_wrist_0_rgb": "side"},
    "compact": {"base_0_rgb": "left", "left_wrist_0_rgb": "tip", "right_wrist_0_rgb": "right"},
}


def fixed_camera_slots(arm: str) -> list[str]:
    """The openpi slots that a built-in arm's fixed cameras fill once its recordings are converted (as above, else
    by name): where past frames show the scene's motion, not the wrist camera's own."""
    cameras = ARMS[arm].cameras
    slots = CAMERA_SLOTS.get(arm) or default_camera_slots([c.name for c in cameras])
    fixed = {c.name for c in cameras if not c.wrist}
    return [slot for slot in IMAGE_SLOTS if slots.get(slot) in fixed]
