"""Built-in MuJoCo tasks (CPU): Lift-v1, Stack-v1, StackPickMulti-v1."""

import logging
import os

# MuJoCo picks its GL backend when first imported; headless machines need EGL (or OSMesa), not GLFW.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL logs an INFO line at import
