"""The simulated soft arm as MJCF: a pseudo-rigid-body continuum arm hanging from a ceiling mount.

Each of the 10 segments is a tapered silicone capsule joined to its parent by three spring-damper hinges (bend
about x, bend about y, twist about z). Segment i's pneumatic actuator bends it about x (even i) or y (odd i) through
a first-order lag (MuJoCo's `filter` dynamics), so `act` is the chamber's normalised pressure. Everything physical
is a field of `ArmSpec`, so a lab can match its own arm.
"""

from __future__ import annotations

import dataclasses
import math


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

    @property
    def length(self) -> float:
        return self.num_segments * self.segment_length

    def radius(self, i: int) -> float:
        return self.radius_base + (self.radius_tip - self.radius_base) * i / max(self.num_segments - 1, 1)

    def actuated_axis(self, i: int) -> int:
        """0 = x, 1 = y: segments alternate so that the arm can bend in 3-D."""
        return i % 2


_AXES = ("1 0 0", "0 1 0", "0 0 1")
BALL_COLORS = {"red": "0.9 0.1 0.1", "green": "0.1 0.75 0.2", "blue": "0.15 0.3 0.95"}
PARKED = (0.0, 0.0, -5.0)  # where an unused ball waits: under the floor, out of every view
BASE_CAMERA_POS = (0.42, -0.52, 0.58)  # a fixed camera in front of the arm, looking at its workspace
SIDE_CAMERA_POS = (0.52, 0.42, 0.58)  # a second one a quarter turn around the arm: together they give depth
BASE_CAMERA_AIM = (0.0, 0.0, 0.28)


def _vec(v) -> str:
    return " ".join(f"{x:.4f}" for x in v)


def _look_at(eye, aim) -> str:
    """MJCF `xyaxes` of a camera at `eye` looking at `aim` with world z up (MuJoCo cameras look along -z)."""
    forward = [a - e for a, e in zip(aim, eye, strict=True)]
    norm = math.sqrt(sum(f * f for f in forward))
    forward = [f / norm for f in forward]
    right = [forward[1], -forward[0], 0.0]  # forward x world-up
    norm = math.sqrt(sum(r * r for r in right))
    right = [r / norm for r in right]
    up = [
        right[1] * forward[2] - right[2] * forward[1],
        right[2] * forward[0] - right[0] * forward[2],
        right[0] * forward[1] - right[1] * forward[0],
    ]
    return f"{_vec(right)} {_vec(up)}"


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


def build_xml(spec: ArmSpec) -> str:
    """MJCF of the arm, a floor, coloured non-colliding balls (mocap targets) and two cameras: `base`, `tip`."""
    n = spec.num_segments
    # The last segment carries the wrist camera and a collar whose mass is the episode's payload (set at run time).
    collar = (
        f'<body name="payload" pos="0 0 {-spec.segment_length / 2}"><geom type="cylinder" '
        f'size="{spec.radius_tip + 0.005} 0.008" mass="0.001" rgba=".3 .3 .35 1" contype="0" conaffinity="0"/></body>'
    )
    tip_camera = f'<camera name="tip" pos="0 0 {-spec.segment_length - 0.012}" xyaxes="1 0 0 0 1 0" fovy="75"/>'
    chain = collar + tip_camera
    for i in reversed(range(n)):
        chain = _segment(spec, i, chain)
    actuators = "".join(
        f'<general name="act{i}" joint="seg{i}_{"bx" if spec.actuated_axis(i) == 0 else "by"}" dyntype="filter" '
        f'dynprm="{spec.actuator_lag}" gainprm="{spec.actuator_torque}" ctrlrange="-1 1" ctrllimited="true"/>'
        for i in range(n)
    )
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
    <camera name="base" pos="{_vec(BASE_CAMERA_POS)}" xyaxes="{_look_at(BASE_CAMERA_POS, BASE_CAMERA_AIM)}" fovy="58"/>
    <camera name="side" pos="{_vec(SIDE_CAMERA_POS)}" xyaxes="{_look_at(SIDE_CAMERA_POS, BASE_CAMERA_AIM)}" fovy="58"/>
  </worldbody>
  <actuator>{actuators}</actuator>
</mujoco>
"""
