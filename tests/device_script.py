"""Run a test script on several virtual CPU devices, in a subprocess.

XLA's device count is fixed when JAX starts, so multi-device checks run in a fresh
Python with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (this pytest process
keeps its single device).  The script prints one line ``JSON<measurements>``."""

import json
import os
import subprocess
import sys


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
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
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
