"""Run a test script on several virtual CPU devices, in a subprocess.

XLA's device count is fixed when JAX starts, so multi-device checks run in a fresh
Python with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (this pytest process
keeps its single device).  The script prints one line ``JSON<measurements>``.

The scripts fit tiny problems, so their time is XLA compiling, most of it LLVM optimizing
the generated code: they compile cheaper (``--xla_backend_optimization_level=0
--xla_llvm_disable_expensive_passes=true``, :data:`CHEAP_COMPILE`; tests/test_multiprocess.py's
workers too).
The HLO passes, whose output the scripts inspect for collectives, are unchanged, and each
script's references are compiled alike; it took about 30% of test_mesh.py's and
test_mesh_batch.py's CPU time off (as ``CHEAP_PROGRAMS`` does in-process, tests/conftest.py).
Tests whose time is running fits keep the default (unoptimized code ran the speckled
cross-validation test at twice the CPU time)."""

import json
import os
import subprocess
import sys

# LLVM's optimization level and its expensive passes off (module docstring)
CHEAP_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def run_on_devices(script: str, devices: int, timeout: float = 900) -> dict:
    """The measurements the script printed, run on ``devices`` virtual CPU devices.

    Args:
        script: Python source that prints a line starting with ``JSON``.
        devices: the number of CPU devices XLA shows the script.
        timeout: seconds before the subprocess is killed.

    Returns:
        The JSON object of that line.
    """
    env = dict(os.environ)
    flags = f"--xla_force_host_platform_device_count={devices} {CHEAP_COMPILE}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JNMF_NO_COMPILE_CACHE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("JSON"))
    return json.loads(line[4:])
