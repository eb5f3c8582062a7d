"""A simulated soft continuum arm (MuJoCo): demonstrations for training and closed-loop scores for policies."""

import os

# Offscreen rendering on a machine without a display: EGL (Mesa's llvmpipe on a CPU). This runs before any
# submodule imports mujoco, which reads the variable once. Set MUJOCO_GL=osmesa (with PYOPENGL_PLATFORM=osmesa and
# libosmesa6 installed) where EGL is missing.
os.environ.setdefault("MUJOCO_GL", "egl")
