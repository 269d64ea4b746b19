"""The fault matrix: every long command, stopped by Ctrl-C or killed at a random
saved point, then rerun, writes the same bytes as an uninterrupted run.

The commands run in this process (their compiled programs are shared, so the matrix
stays quick). Ctrl-C is a real SIGINT sent to this process at the chosen point;
``kill -9`` is an exception no handler catches, raised at the same kind of point
(the process's state on disk is then exactly what a killed process leaves, since
every file is written atomically). The real-process versions (subprocesses
interrupted and killed) are in ``test_faults.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest

from cnnvis_jax import checkpoint, interrupt
from cnnvis_jax.cli import main


class _Killed(BaseException):
    """kill -9 at this point: nothing after it runs, no handler sees it."""


def _commands(weights: str) -> dict[str, list[str]]:
    model = ["--model", "conceptnet", "--weights", weights, "--quiet"]
    return {
        "am": ["am", *model, "--layer", "conv4", "--units", "0:3", "--preset", "yosinski2",
               "--steps", "24"],
        "mfv": ["mfv", *model, "--class", "fish", "--facets", "2", "--per-facet", "3",
                "--images", "120", "--steps", "12"],
        "invert": ["invert", *model, "--layer", "conv3", "--count", "1", "--preset",
                   "mahendran2015", "--steps", "24"],
        "deconv": ["deconv", *model, "--layer", "conv3", "--units", "0:3", "--top", "3",
                   "--count", "48", "--batch-size", "16"],
        "net2vec": ["net2vec", *model, "--layer", "conv3", "--epochs", "3", "--train-count",
                    "64", "--val-count", "32", "--batch-size", "16"],
        "train-decoder": ["train-decoder", *model, "--layer", "conv3", "--steps", "9",
                          "--batch-size", "8", "--checkpoint-every", "3"],
        "gallery": ["gallery", *model, "--dataset", "skimage:astronaut,coffee", "--layers",
                    "conv3", "--units", "2", "--top", "2", "--am-steps", "8",
                    "--inversion-steps", "8"],
    }  # fmt: skip


def _timeless(value):
    """JSON data without the seconds it took (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every file a person reads (not the hidden state), timings dropped."""
    from safetensors.numpy import load_file

    files = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        hidden = any(p.startswith(".") or p == "checkpoints" for p in Path(name).parts)
        if not path.is_file() or hidden:  # the resumable state
            continue
        if path.suffix == ".json":
            files[name] = json.dumps(_timeless(json.loads(path.read_bytes()))).encode()
        elif path.suffix == ".safetensors":  # the tensors; the header states the seconds
            files[name] = b"".join(k.encode() + v.tobytes()
                                   for k, v in sorted(load_file(path).items()))  # fmt: skip
        elif path.name != "index.html" or path.parent.name != "decoder":
            files[name] = path.read_bytes()
    return files


def _count_checks(monkeypatch, argv: list[str]) -> int:
    real, calls = interrupt.check, []

    def counting(what="work"):
        calls.append(what)
        real(what)

    monkeypatch.setattr(interrupt, "check", counting)
    assert main(argv) == 0
    monkeypatch.setattr(interrupt, "check", real)
    return len(calls)


_WHOLE: dict[str, tuple[dict[str, bytes], int]] = {}


@pytest.mark.parametrize("fault", ["sigint", "kill"])
@pytest.mark.parametrize("command", list(_commands("")))
def test_stopped_then_rerun_gives_the_same_bytes(command, fault, trained_run, tmp_path,
                                                 monkeypatch, capsys):  # fmt: skip
    monkeypatch.setattr(checkpoint, "INTERVAL_S", 0.0)  # save at every step
    argv = _commands(str(trained_run / "weights.safetensors"))[command]
    if command not in _WHOLE:
        whole = tmp_path / "whole"
        checks = _count_checks(monkeypatch, [*argv, "--out", str(whole)])
        _WHOLE[command] = (_outputs(whole), checks)
    expected, checks = _WHOLE[command]
    assert checks >= 3, f"{command} stops only at {checks} points"
    at = random.Random(f"{command}/{fault}").randint(1, checks - 1)
    real, calls = interrupt.check, []

    def stop(what="work"):
        calls.append(what)
        if len(calls) == at:
            if fault == "kill":
                raise _Killed
            os.kill(os.getpid(), signal.SIGINT)
        real(what)

    out = tmp_path / "cut"
    monkeypatch.setattr(interrupt, "check", stop)
    if fault == "kill":
        with pytest.raises(_Killed):
            main([*argv, "--out", str(out)])
    else:
        assert main([*argv, "--out", str(out)]) == 130
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "cnnvis: interrupted; rerun the same command to resume."
        )
    monkeypatch.setattr(interrupt, "check", real)
    assert _outputs(out) != expected  # it did stop before the end
    assert main([*argv, "--out", str(out)]) == 0
    assert _outputs(out) == expected
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".cnnvis.lock"]
    assert command == "train-decoder" or not hidden, hidden  # checkpoints removed at the end
