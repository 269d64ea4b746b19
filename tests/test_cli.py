"""The `cnnvis` command: one contract test per command on tiny settings."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cnnvis_jax.cli import main

TINY_TRAIN = ["--epochs", "2", "--train-size", "64", "--val-size", "32", "--batch-size", "32"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "models", "data"):
        assert command in out


def test_models_lists_the_zoo(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for name in ("conceptnet", "alexnet", "caffenet", "vgg16", "resnet18", "resnet50", "googlenet"):
        assert name in out


def test_models_shows_layers_and_receptive_fields(capsys):
    code, out, _ = run_cli(capsys, "models", "alexnet", "--json")
    assert code == 0
    layers = {r["name"]: r for r in json.loads(out)["layers"]}
    assert layers["conv5"]["receptive_field"] == {
        "size": [163, 163],
        "stride": [16, 16],
        "offset": [-66, -66],
    }
    assert layers["fc8"]["receptive_field"] is None
    assert "features.11" in layers["conv5"]["aliases"]
    code, out, _ = run_cli(capsys, "models", "conceptnet")
    assert code == 0 and "conv5" in out and "8x8x96" in out


def test_unknown_model_is_exit_2_with_the_valid_names(capsys):
    code, _, err = run_cli(capsys, "models", "alexnot")
    assert code == 2
    assert err.count("\n") == 1 and "unknown model 'alexnot'" in err and "alexnet" in err


def test_train_writes_metrics_and_report(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "--out", str(out_dir), "--quiet", *TINY_TRAIN)
    assert code == 0 and "val_accuracy" in out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert {"val_accuracy", "epochs", "seconds"} <= metrics.keys()
    assert (out_dir / "report" / "index.html").exists()
    code, _, err = run_cli(
        capsys, "train", "--out", str(out_dir), "--quiet", "--seed", "3", *TINY_TRAIN
    )
    assert code == 2 and "another configuration" in err


def test_data_generate_and_inspect_broden(capsys, tmp_path):
    out_dir = tmp_path / "broden"
    code, _, _ = run_cli(
        capsys, "data", "generate", "--format", "broden", "--train", "12", "--out", str(out_dir)
    )
    assert code == 0 and (out_dir / "index.csv").exists()
    code, out, _ = run_cli(capsys, "data", "inspect", f"broden:{out_dir}", "--quiet")
    assert code == 0
    assert "12" in out and "object" in out and "color" in out


def test_data_inspect_concepts(capsys):
    code, out, _ = run_cli(capsys, "data", "inspect", "concepts", "--quiet")
    assert code == 0 and "red-c" in out and "scene" in out


def test_data_inspect_bad_inputs(capsys, tmp_path):
    code, _, err = run_cli(capsys, "data", "inspect", f"broden:{tmp_path / 'missing'}", "--quiet")
    assert code == 2 and "cnnvis: error:" in err
    code, _, err = run_cli(capsys, "data", "inspect", "imagenet", "--quiet")
    assert code == 2 and "broden:DIR" in err


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_metrics(tmp_path):
    """SIGKILL a real `cnnvis train` after its first checkpoint; the rerun ends
    with the metrics of an uninterrupted run."""
    args = [
        "--epochs",
        "2",
        "--train-size",
        "128",
        "--val-size",
        "32",
        "--batch-size",
        "32",
        "--quiet",
    ]
    env = {**os.environ, "CNNVIS_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "cnnvis_jax.cli", "train", "--checkpoint-every", "1"]
    subprocess.run([*cmd, "--out", str(tmp_path / "whole"), *args], check=True, env=env)
    victim = subprocess.Popen([*cmd, "--out", str(tmp_path / "killed"), *args], env=env)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        steps = (
            [p for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.exists() else []
        )
        if any(int(p.name) >= 2 for p in steps):
            break
        time.sleep(0.05)
    was_killed = victim.poll() is None
    if was_killed:
        victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert was_killed, "training ended before it could be interrupted"
    assert not (tmp_path / "killed" / "metrics.json").exists()
    subprocess.run([*cmd, "--out", str(tmp_path / "killed"), *args], check=True, env=env)
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    for key in ("val_accuracy", "val_loss", "epochs", "steps"):
        assert resumed[key] == whole[key]
    strip = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert strip(resumed["history"]) == strip(whole["history"])


@pytest.mark.parametrize(
    "argv, option",
    [
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--train-size", "0"], "--train-size"),
        (["train", "--batch-size", "-3"], "--batch-size"),
        (["train-decoder", "--layer", "conv5", "--steps", "0"], "--steps"),
    ],
)
def test_zero_is_an_error_not_the_default(argv, option, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{option} must be at least 1" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before any work


def test_models_default_shows_the_default_network(capsys):
    assert main(["models", "default"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("conceptnet: input 64x64") and "conv5" in out


@pytest.mark.parametrize("command", [["am", "--layer", "conv1", "--units", "0"],
                                     ["dissect", "--layer", "conv1"], ["diagnose"],
                                     ["survey"], ["train"]])  # fmt: skip
def test_an_unusable_out_is_one_line_before_any_work(tmp_path, capsys, command):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for out, message in ((a_file, "is a file"), (a_file / "sub", "cannot write into --out"),
                         ("", "empty string")):  # fmt: skip
        assert main([*command, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cnnvis: error:") and len(err.strip().splitlines()) == 1, err
        assert message in err, err


def test_an_unwritable_out_or_cache_is_one_line(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    real = tempfile.NamedTemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if str(dir).endswith("ro"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    assert main(["diagnose", "--out", str(tmp_path / "ro")]) == 2
    assert "Read-only file system" in capsys.readouterr().err
    monkeypatch.setenv("CNNVIS_CACHE", str(tmp_path / "cache-ro"))
    assert main(["diagnose", "--out", str(tmp_path / "ok")]) == 2
    err = capsys.readouterr().err
    assert "$CNNVIS_CACHE" in err and len(err.strip().splitlines()) == 1
    assert main(["models"]) == 0  # listing models needs no writable cache


def test_a_size_limited_output_is_exit_2_and_one_line(trained_run, tmp_path):
    """A real write failure mid-run (a file-size limit: writes fail with EFBIG, as on
    a full disk they fail with ENOSPC) ends with exit 2 and one line naming the file."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    env = {**os.environ, "CNNVIS_PROGRESS": "0", "JAX_ENABLE_COMPILATION_CACHE": "false"}
    cmd = [sys.executable, "-m", "cnnvis_jax.cli", "am", "--model", "conceptnet", "--weights",
           str(trained_run / "weights.safetensors"), "--layer", "conv2", "--units", "0:4",
           "--preset", "yosinski1", "--steps", "4", "--quiet", "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(cmd, preexec_fn=limit, capture_output=True, text=True, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("cnnvis: error: cannot write"), done.stderr
    assert "File too large" in lines[0] and str(tmp_path / "out") in lines[0]


def test_train_passes_shuffle_labels_to_the_config(tmp_path, monkeypatch):
    import cnnvis_jax.train as train_mod

    seen = []

    def fake_train(config, out, progress):
        seen.append(config)
        return {"val_accuracy": 0.1, "epochs": config.epochs, "seconds": 0.0}

    monkeypatch.setattr(train_mod, "train", fake_train)
    assert main(["train", "--out", str(tmp_path / "r"), "--shuffle-labels", "--quiet"]) == 0
    assert main(["train", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert [c.shuffle_labels for c in seen] == [True, False]
