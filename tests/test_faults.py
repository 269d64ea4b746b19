"""Faults: an interrupted or killed long command resumes to the same bytes as an
uninterrupted one; other arguments into the same folder, a corrupt checkpoint and two
commands writing into one folder are refused with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnvis_jax import interrupt
from cnnvis_jax.am import objectives_for_units, preset, render
from cnnvis_jax.cli import main
from cnnvis_jax.errors import InputError


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}  # fmt: skip


def test_render_resumes_from_its_checkpoint_to_the_same_result(trained_conceptnet, tmp_path,
                                                              monkeypatch):  # fmt: skip
    model = trained_conceptnet
    objectives = objectives_for_units(model, "conv3_pre", [0, 5], "neuron")
    recipe = preset("yosinski2")
    whole = render(model, objectives, recipe, key=0, steps=40, checkpoint=tmp_path / "a.npz")
    calls = {"n": 0}
    real = interrupt.check

    def stop_after_three(what="work"):
        calls["n"] += 1
        if calls["n"] == 3:
            raise interrupt.Interrupted(what)
        real(what)

    monkeypatch.setattr(interrupt, "check", stop_after_three)
    with pytest.raises(interrupt.Interrupted):
        render(model, objectives, recipe, key=0, steps=40, checkpoint=tmp_path / "b.npz")
    monkeypatch.setattr(interrupt, "check", real)
    assert int(np.load(tmp_path / "b.npz")["done"]) == 6  # 3 chunks of 2 steps
    resumed = render(model, objectives, recipe, key=0, steps=40, checkpoint=tmp_path / "b.npz")
    for name in ("images", "trajectory", "best_activation", "final_activation"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(resumed, name), name)
    plain = render(model, objectives, recipe, key=0, steps=40)  # one chunk, no checkpoint
    np.testing.assert_allclose(whole.images, plain.images, atol=1e-5)
    (tmp_path / "c.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="corrupt or not a checkpoint"):
        render(model, objectives, recipe, key=0, steps=40, checkpoint=tmp_path / "c.npz")


def _am(weights: Path, out: Path, steps: int = 300) -> list[str]:
    return [sys.executable, "-m", "cnnvis_jax.cli", "am", "--model", "conceptnet",
            "--weights", str(weights), "--layer", "conv4", "--units", "0:3", "--preset",
            "yosinski2", "--steps", str(steps), "--quiet", "--out", str(out)]  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.05)


def test_am_interrupted_and_killed_then_rerun_gives_the_same_bytes(trained_run, tmp_path):
    """Ctrl-C, then kill -9 of the rerun, then a rerun to the end: the same files as an
    uninterrupted run."""
    weights = trained_run / "weights.safetensors"
    whole = tmp_path / "whole"
    subprocess.run(_am(weights, whole), check=True, capture_output=True)
    out = tmp_path / "am"
    checkpoint = out / ".render-checkpoint.npz"
    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = subprocess.Popen(_am(weights, out), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        before = np.load(checkpoint)["done"] if checkpoint.exists() else -1
        end = time.monotonic() + 240
        while not (checkpoint.exists() and np.load(checkpoint)["done"] > before):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < end, "no checkpoint appeared"
            time.sleep(0.05)
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=240)
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.returncode == 130, err
            assert err.strip().splitlines()[-1] == (
                "cnnvis: interrupted; rerun the same command to resume."
            ), err
            assert "Traceback" not in err
        assert not (out / "results.json").exists()
    done = subprocess.run(_am(weights, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _outputs(out) == _outputs(whole)
    assert not checkpoint.exists()


def test_other_arguments_into_the_same_folder_are_refused(trained_run, tmp_path, capsys):
    weights = str(trained_run / "weights.safetensors")
    base = ["am", "--model", "conceptnet", "--weights", weights, "--layer", "conv2",
            "--units", "0:2", "--preset", "yosinski1", "--quiet", "--out", str(tmp_path)]  # fmt: skip
    assert main([*base, "--steps", "3"]) == 0
    capsys.readouterr()
    assert main([*base, "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "steps: 3 then, 4 now" in err, err
    assert main([*base, "--steps", "4", "--overwrite"]) == 0


def test_a_folder_in_use_is_refused(tmp_path, capsys):
    from cnnvis_jax.cli.common import lock_folder, release_locks

    lock_folder(tmp_path)
    try:
        assert main(["diagnose", "--model", "conceptnet", "--out", str(tmp_path)]) == 2
    finally:
        release_locks()
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "is writing into" in err


def _invert(weights: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cnnvis_jax.cli", "invert", "--model", "conceptnet",
            "--weights", str(weights), "--layer", "conv3", "--count", "1", "--preset",
            "mahendran2015", "--steps", "300", "--quiet", "--out", str(out)]  # fmt: skip


def test_invert_terminated_then_rerun_gives_the_same_bytes(trained_run, tmp_path):
    """SIGTERM (what a scheduler sends) stops like Ctrl-C: state saved, exit 130."""
    weights = trained_run / "weights.safetensors"
    whole = tmp_path / "whole"
    subprocess.run(_invert(weights, whole), check=True, capture_output=True)
    out = tmp_path / "cut"
    proc = subprocess.Popen(_invert(weights, out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(out / ".invert-checkpoint" / "group0.npz", proc)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert not (out / "results.json").exists()
    done = subprocess.run(_invert(weights, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _outputs(out) == _outputs(whole)
