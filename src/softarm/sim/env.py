"""SoftArmEnv: step a MuJoCo arm at the control rate, read its 19-feature node graph, render its cameras.

Node i is the distal end of segment i; every feature is expressed in the mount's frame (the arm's base frame),
exactly as `softarm.arm.NODE_FEATURES` and docs/data_format.md define them. An arm without per-segment actuators
(tendons) has no per-node command or actuator state: those two features are 0 and it does not declare them measured.
"""

from __future__ import annotations

import mujoco
import numpy as np

from softarm import arm
from softarm.sim.arm_model import BALL_COLORS, PARKED, ArmSpec, build_xml

CONTROL_HZ = 10.0  # the simulated arm's control rate: one command, one observation per step


class SoftArmEnv:
    def __init__(self, spec: ArmSpec | None = None, *, control_hz: float = CONTROL_HZ) -> None:
        spec = spec or ArmSpec()
        self.spec, self.control_hz = spec, control_hz
        self.cameras = tuple(camera.name for camera in spec.cameras)
        self.command_low, self.command_high = spec.command_range
        self.model = mujoco.MjModel.from_xml_string(build_xml(spec))
        self.data = mujoco.MjData(self.model)
        self.substeps = round(1.0 / (control_hz * spec.timestep))
        n, m = spec.num_segments, self.model
        self.segment_geoms = np.array([mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"seg{i}") for i in range(n)])
        self.node_sites = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, f"node{i}") for i in range(n)]
        self.segment_bodies = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, f"seg{i}") for i in range(n)]
        # qpos address of each segment's (bend x, bend y, twist) hinges
        self.hinge_qpos = np.array(
            [[m.jnt_qposadr[m.joint(f"seg{i}_{axis}").id] for axis in ("bx", "by", "tw")] for i in range(n)]
        )
        self.mount_pos = m.body("mount").pos.copy()
        self._balls = {color: m.body_mocapid[m.body(f"ball_{color}").id] for color in BALL_COLORS}
        self._payload_body = m.body("payload").id
        self._collar = (m.body_mass[self._payload_body], m.body_inertia[self._payload_body].copy())
        self._renderer: mujoco.Renderer | None = None
        self.last_action = np.zeros(spec.num_actuators, np.float32)
        self.reset()

    # --- state -------------------------------------------------------------------------------------------------
    def reset(self, qpos: np.ndarray | None = None, command: np.ndarray | None = None) -> None:
        """The arm still at `qpos` under constant `command` (default: straight, zero pressure)."""
        mujoco.mj_resetData(self.model, self.data)
        if qpos is not None:
            self.data.qpos[:] = qpos
        if command is not None:
            self.data.act[:] = self.data.ctrl[:] = command
        self.last_action[:] = 0.0 if command is None else command
        mujoco.mj_forward(self.model, self.data)

    def place_balls(self, positions: dict[str, np.ndarray]) -> None:
        """Put the named balls at `positions` (base frame, m); the other balls are parked out of view."""
        unknown = sorted(set(positions) - set(self._balls))
        if unknown:
            raise ValueError(f"no ball coloured {unknown[0]!r}; the scene has {sorted(self._balls)}")
        for color, mocap in self._balls.items():
            where = np.asarray(positions[color]) + self.mount_pos if color in positions else PARKED
            self.data.mocap_pos[mocap] = where
        mujoco.mj_forward(self.model, self.data)

    def set_payload(self, mass: float) -> None:
        """Load the tip collar with `mass` kg (scaling its inertia with it): an unknown load for the policy."""
        if not 0.0 <= mass <= 1.0:
            raise ValueError(f"payload must be 0-1 kg, got {mass}")
        base_mass, base_inertia = self._collar
        total = base_mass + mass
        self.model.body_mass[self._payload_body] = total
        self.model.body_inertia[self._payload_body] = base_inertia * total / base_mass

    def step(self, action: np.ndarray) -> None:
        """Hold `action` (one command per actuator, clipped to its range) for one control period."""
        action = np.asarray(action, np.float64).reshape(self.spec.num_actuators)
        action = np.clip(action, self.command_low, self.command_high)
        if not np.isfinite(action).all():
            raise ValueError(f"action contains NaN or Inf: {action}")
        self.data.ctrl[:] = action
        self.last_action[:] = action
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)

    def tip_position(self) -> np.ndarray:
        """The last node's position in the base frame (m)."""
        return self.data.site_xpos[self.node_sites[-1]] - self.mount_pos

    # --- the graph -----------------------------------------------------------------------------------------------
    def contact_forces(self) -> np.ndarray:
        """Normal contact force on each segment (N), summed over its contacts."""
        forces = np.zeros(self.spec.num_segments)
        wrench = np.zeros(6)
        for k in range(self.data.ncon):
            contact = self.data.contact[k]
            for geom in (contact.geom1, contact.geom2):
                hit = np.flatnonzero(self.segment_geoms == geom)
                if hit.size:
                    mujoco.mj_contactForce(self.model, self.data, k, wrench)
                    forces[hit[0]] += abs(wrench[0])
        return forces

    def node_features(self) -> np.ndarray:
        """[num_segments, 19] float32, per the schema in softarm.arm."""
        n, d = self.spec.num_segments, self.data
        nodes = np.zeros((n, arm.NUM_NODE_FEATURES))
        velocity = np.zeros(6)
        for i, (site, body) in enumerate(zip(self.node_sites, self.segment_bodies, strict=True)):
            nodes[i, 0:3] = d.site_xpos[site] - self.mount_pos
            quat = d.xquat[body]
            nodes[i, 3:7] = quat if quat[0] >= 0 else -quat
            mujoco.mj_objectVelocity(self.model, d, mujoco.mjtObj.mjOBJ_SITE, site, velocity, 0)
            nodes[i, 7:10] = velocity[3:]
            mujoco.mj_objectVelocity(self.model, d, mujoco.mjtObj.mjOBJ_SITE, site, velocity, 1)
            nodes[i, 10:13] = velocity[:3]
        nodes[:, 13:16] = d.qpos[self.hinge_qpos] / self.spec.segment_length
        if self.spec.actuation == "chambers":  # one actuator per segment
            nodes[:, 16] = self.last_action
            nodes[:, 17] = d.act
        nodes[:, 18] = self.contact_forces()
        return nodes.astype(np.float32)

    def state(self) -> np.ndarray:
        """What a soft arm reports without shape sensing: its actuators' filtered commands (chamber pressures,
        tendon tensions)."""
        return self.data.act.astype(np.float32).copy()

    # --- cameras ---------------------------------------------------------------------------------------------------
    def render(self) -> dict[str, np.ndarray]:
        """{camera: uint8 [H, W, 3]} from each of the arm's cameras."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, *self.spec.image_size)
        images = {}
        for camera in self.cameras:
            self._renderer.update_scene(self.data, camera)
            images[camera] = self._renderer.render().copy()
        return images

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> SoftArmEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
