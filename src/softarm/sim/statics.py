"""The arm's quasi-static model: where it rests under constant pressures, and which pressures put the tip somewhere.

At rest under constant pressures u the arm settles where springs, actuators and gravity balance:
K q = B u - g(q). `StaticArm` solves that balance with MuJoCo's own gravity terms (a relaxed fixed point,
microseconds per iteration), so its equilibria are the simulator's; `solve` finds u for a tip position by damped
least squares on a finite-difference Jacobian of u -> tip.
"""

from __future__ import annotations

import mujoco
import numpy as np

from softarm.sim.env import SoftArmEnv

HEADROOM = 0.025  # of each actuator's range, kept free at both ends for disturbance


class StaticArm:
    def __init__(self, env: SoftArmEnv) -> None:
        self.env, self.model = env, env.model  # shares the env's model: its payload is the static model's too
        self.data = mujoco.MjData(env.model)
        self.mount_pos, self.tip_site = env.mount_pos, env.node_sites[-1]
        self.stiffness = env.model.jnt_stiffness.copy()  # one hinge per dof, qpos and dof indices coincide
        low, high = env.spec.command_range
        self.bounds = (low + HEADROOM * (high - low), high - HEADROOM * (high - low))
        self.middle = (low + high) / 2

    def equilibrium(self, u: np.ndarray, q0: np.ndarray | None = None, *, tol: float = 1e-7) -> np.ndarray:
        """Joint angles where the arm rests under constant commands `u`."""
        d = self.data
        d.qpos[:] = 0.0 if q0 is None else q0
        d.qvel[:] = 0.0
        d.act[:] = u
        for _ in range(200):
            mujoco.mj_forward(self.model, d)
            # qfrc_passive = -K q at rest, so this is K^-1 (actuator - gravity): the balance's fixed point.
            q_next = (d.qfrc_actuator - d.qfrc_bias) / self.stiffness
            step = q_next - d.qpos
            d.qpos[:] += 0.7 * step
            if np.abs(step).max() < tol:
                break
        mujoco.mj_kinematics(self.model, d)
        return d.qpos.copy()

    def tip(self, u: np.ndarray, q0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = self.equilibrium(u, q0)
        return self.data.site_xpos[self.tip_site] - self.mount_pos, q

    def solve(
        self, target: np.ndarray, u0: np.ndarray, *, iterations: int = 40, tol: float = 5e-4, damping: float = 0.02
    ) -> tuple[np.ndarray, float]:
        """Commands whose equilibrium puts the tip at `target` (base frame); returns (u, residual m)."""
        u = np.clip(np.asarray(u0, np.float64), *self.bounds)
        tip, q = self.tip(u)
        eps = 1e-3
        for _ in range(iterations):
            error = target - tip
            if np.linalg.norm(error) < tol:
                break
            jacobian = np.empty((3, len(u)))
            for k in range(len(u)):
                du = u.copy()
                du[k] += eps
                jacobian[:, k] = (self.tip(du, q)[0] - tip) / eps
            # Damped least squares plus a pull towards the middle of the actuators' range, away from their limits
            # (the null space has len(u) - 3 dims: pressures that cancel, tendons that pull against each other).
            jjt = jacobian @ jacobian.T + damping**2 * np.eye(3)
            step = jacobian.T @ np.linalg.solve(jjt, error)
            null = np.eye(len(u)) - jacobian.T @ np.linalg.solve(jjt, jacobian)
            u = np.clip(u + step - 0.05 * null @ (u - self.middle), *self.bounds)
            tip, q = self.tip(u, q)
        return u, float(np.linalg.norm(target - tip))
