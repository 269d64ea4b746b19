"""Run test code on 8 CPU devices: JAX fixes its devices at start, so in a subprocess."""

import os
import subprocess
import sys


def run_on_eight_devices(code: str, timeout: int = 300) -> None:
    """Run the Python source ``code`` with 8 CPU devices; fail with its stderr if it fails."""
    env = dict(os.environ)
    env.update(
        JAX_NUM_CPU_DEVICES="8",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert run.returncode == 0, run.stderr[-3000:]
