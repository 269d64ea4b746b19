"""Several processes through ``jax.distributed`` (2 processes x 4 CPU devices on
loopback, CPU collectives over gloo) give the one-process results; a run killed under
two processes resumes under one, as does one whose second process died (the launcher
stops the survivor and says so); bad process settings fail fast with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_dissection_tally import (  # noqa: E402
    assert_equals_one_device,
    make_source,
    tiny_model,
)

from cnnvis_jax.cli import main  # noqa: E402
from cnnvis_jax.dissection import dissect  # noqa: E402
from cnnvis_jax.launch import free_port, process_env  # noqa: E402

TESTS = str(Path(__file__).parent)
CLI = [sys.executable, "-m", "cnnvis_jax.cli"]

CHILD = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from cnnvis_jax import distributed
assert distributed.initialize()  # from the environment
import jax
assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
from test_dissection_tally import dissected_arrays
np.savez({out!r} + str(jax.process_index()) + ".npz", **dissected_arrays())
"""


def _env(index: int, port: int, **extra) -> dict[str, str]:
    env = process_env(index, 2, port, 4)
    env.update(JAX_PLATFORMS="cpu", CNNVIS_JOIN_TIMEOUT="60", **extra)
    return env


def _run_pair(argvs, timeout=300, **extra):
    """Start two processes of one run (``argvs[i]`` for process ``i``); their results."""
    port = free_port()
    procs = [subprocess.Popen(argv, env=_env(i, port, **extra), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i, argv in enumerate(argvs)]  # fmt: skip
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, *o) for p, o in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_two_processes_count_what_one_process_counts(tmp_path):
    code = textwrap.dedent(CHILD).format(tests=TESTS, out=str(tmp_path / "process"))
    runs = _run_pair([[sys.executable, "-c", code]] * 2)
    for rc, _, err in runs:
        assert rc == 0, err[-3000:]
    assert jax.device_count() == 1 and jax.process_count() == 1
    one = dissect(tiny_model(), make_source(), "conv1,conv2", quantile=0.05, batch_size=8,
                  progress=False)  # fmt: skip
    for process in (0, 1):  # every process ends with the whole result
        assert_equals_one_device(np.load(tmp_path / f"process{process}.npz"), one)


FAMILIES = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from cnnvis_jax import distributed
assert distributed.initialize()
import jax
from test_am_helpers import tiny_model as am_model
from test_am_sharded import UNITS, recipe
from test_dissection_tally import make_source, tiny_model
from test_net2vec import colour_model, planted
from cnnvis_jax import am
from cnnvis_jax.deconv import top_activations
from cnnvis_jax.dissection.net2vec import net2vec
from cnnvis_jax.features import extract_features
out = {{}}
source = make_source(n=45)
out["features"] = extract_features(tiny_model(), source, ["conv2"], batch_size=8,
                                   progress=False)["conv2"]
top = top_activations(tiny_model(), source, "conv2", k=4, batch_size=8, progress=False)
out["top_values"], out["top_images"] = top.values, top.image_index
r = am.render(am_model(), [am.channel("conv2", u) for u in UNITS], recipe(), key=3)
out["am_images"], out["am_final"] = r.images, r.final_activation
res = net2vec(colour_model(), planted(64, 0), planted(32, 1), "conv1", quantile=0.05, epochs=3,
              learning_rate=0.01, min_images=3, progress=False)
out["n2v_weights"], out["n2v_iou"] = res.weights, res.set_iou
import dataclasses
from test_inversion_decoder import CONFIG, tiny_model as decoder_model
from cnnvis_jax.data.concepts import ConceptSet
from cnnvis_jax.inversion import train_decoder
config = dataclasses.replace(CONFIG, steps=4, checkpoint_every=2)  # orbax, two processes
d = train_decoder(decoder_model(), config, {decoder!r}, progress=False,
                  source=ConceptSet(64, split="train", image_size=32))
out.update({{"decoder/" + k: np.asarray(v) for k, v in d.params.items()}})
import functools
import cnnvis_jax.train as train_module
from cnnvis_jax.default import default_model
train_module.TrainConfig = functools.partial(  # a first use that trains quickly
    train_module.TrainConfig, epochs=1, train_size=64, val_size=32, batch_size=32)
first_use = default_model(progress=False)  # trained by both, moved into place by process 0
out["default"] = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(first_use.params)])
np.savez({out!r} + str(jax.process_index()) + ".npz", **out)
"""


def test_features_top_k_am_net2vec_and_decoder_over_two_processes(tmp_path):
    from test_am_helpers import tiny_model as am_model
    from test_am_sharded import UNITS, recipe
    from test_net2vec import colour_model, planted

    from cnnvis_jax import am
    from cnnvis_jax.deconv import top_activations
    from cnnvis_jax.dissection.net2vec import net2vec
    from cnnvis_jax.features import extract_features

    code = textwrap.dedent(FAMILIES).format(
        tests=TESTS, out=str(tmp_path / "process"), decoder=str(tmp_path / "decoder")
    )
    cache = tmp_path / "cache"
    for rc, _, err in _run_pair([[sys.executable, "-c", code]] * 2, CNNVIS_CACHE=str(cache)):
        assert rc == 0, err[-3000:]
    assert (cache / "conceptnet-default" / "weights.safetensors").is_file()
    assert not (cache / "conceptnet-default.partial").exists()
    trained = [np.load(tmp_path / f"process{p}.npz")["default"] for p in (0, 1)]
    np.testing.assert_array_equal(trained[0], trained[1])
    source = make_source(n=45)
    feats = extract_features(tiny_model(), source, ["conv2"], batch_size=8, progress=False)
    top = top_activations(tiny_model(), source, "conv2", k=4, batch_size=8, progress=False)
    r = am.render(am_model(), [am.channel("conv2", u) for u in UNITS], recipe(), key=3)
    res = net2vec(colour_model(), planted(64, 0), planted(32, 1), "conv1", quantile=0.05,
                  epochs=3, learning_rate=0.01, min_images=3, progress=False)  # fmt: skip
    import dataclasses

    from test_inversion_decoder import CONFIG
    from test_inversion_decoder import tiny_model as decoder_model

    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.inversion import train_decoder

    config = dataclasses.replace(CONFIG, steps=4, checkpoint_every=2)
    decoder = train_decoder(decoder_model(), config, tmp_path / "one", progress=False,
                            source=ConceptSet(64, split="train", image_size=32))  # fmt: skip
    for process in (0, 1):
        got = np.load(tmp_path / f"process{process}.npz")
        for k, v in decoder.params.items():  # data-parallel: gradients summed in another order
            np.testing.assert_allclose(got["decoder/" + k], v, rtol=1e-3, atol=2e-5, err_msg=k)
        np.testing.assert_allclose(got["features"], feats["conv2"], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got["top_images"], top.image_index)  # bitwise indices
        np.testing.assert_allclose(got["top_values"], top.values, rtol=1e-6)
        np.testing.assert_allclose(got["am_images"], r.images, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["am_final"], r.final_activation, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["n2v_weights"], res.weights, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["n2v_iou"], res.set_iou, rtol=1e-6, atol=1e-6)


DISSECT = ["dissect", "--model", "conceptnet", "--dataset", "concepts", "--layers",
           "conv3,conv5", "--batch-size", "16", "--top", "3", "--quiet"]  # fmt: skip


def test_launch_writes_the_one_process_files(tmp_path, capsys):
    args = DISSECT + ["--count", "64"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run(
        CLI + ["launch", "--processes", "2", "--devices-per-process", "4", "--"] + args
        + ["--out", str(tmp_path / "a")], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("units covering") == 2  # conv3 and conv5, printed once
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    for layer in ("conv3", "conv5"):
        a, b = tmp_path / "a" / layer, tmp_path / "b" / layer
        assert (a / "tally.csv").read_bytes() == (b / "tally.csv").read_bytes()
        assert (a / "units" / "unit0002.jpg").read_bytes() == (
            b / "units" / "unit0002.jpg"
        ).read_bytes()
    a_summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert a_summary == json.loads((tmp_path / "b" / "summary.json").read_text())


INTERRUPTED = DISSECT + ["--count", "512", "--checkpoint-every", "1", "--no-pictures"]
"""A run of 32 batches per pass with a checkpoint after each, interrupted below."""


def _launch_two(out: Path) -> subprocess.Popen:
    """:data:`INTERRUPTED` under ``cnnvis launch --processes 2`` into ``out``, in a
    process group of its own."""
    return subprocess.Popen(
        CLI + ["launch", "--processes", "2", "--devices-per-process", "4", "--"]
        + INTERRUPTED + ["--out", str(out)], env=dict(os.environ, JAX_PLATFORMS="cpu"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def _freeze_at(checkpoint: Path, launcher: subprocess.Popen) -> None:
    """Stop (SIGSTOP) every process of ``launcher``'s group as soon as ``checkpoint``
    appears: the run is then frozen part way through, however fast its passes are on
    this machine (with a warm compilation cache a pass takes a fraction of a second)."""
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert launcher.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.002)
    os.killpg(launcher.pid, signal.SIGSTOP)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The output folder of :data:`INTERRUPTED` run through in one process."""
    whole = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main(INTERRUPTED + ["--out", str(whole)]) == 0
    return whole


def _resumes_like(out: Path, checkpoint: Path, whole: Path) -> None:
    """The interrupted run in ``out`` stopped part way through pass 1 with a valid
    checkpoint, and the same command in one process finishes it as ``whole``."""
    done = int(np.load(checkpoint)["done"])  # loads: written atomically
    assert 0 < done < 512  # stopped part way through pass 1
    assert main(INTERRUPTED + ["--out", str(out)]) == 0  # one process, the same command
    for layer in ("conv3", "conv5"):
        assert (out / layer / "tally.csv").read_bytes() == (
            whole / layer / "tally.csv"
        ).read_bytes()


def test_killed_two_process_run_resumes_in_one_process(tmp_path, uninterrupted):
    out = tmp_path / "run"
    # started with SIGINT blocked and ignored, as a job runner, a shell's background job
    # or the parent's libraries can leave it (both are inherited): the launcher lets it
    # through to itself and its processes
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        launcher = _launch_two(out)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    checkpoint = out / "checkpoint" / "pass1.npz"
    _freeze_at(checkpoint, launcher)  # once pass 1 is under way
    os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C reaches every process of the run
    os.killpg(launcher.pid, signal.SIGCONT)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0, err.decode()[-2000:]
    _resumes_like(out, checkpoint, uninterrupted)


def _child_of(parent: int, process_id: int) -> int | None:
    """Pid of the process that ``parent`` started with CNNVIS_PROCESS_ID=``process_id``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        if ppid == parent and f"CNNVIS_PROCESS_ID={process_id}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_one_process_dying_stops_the_others_and_the_checkpoint_resumes(tmp_path, uninterrupted):
    out = tmp_path / "run"
    launcher = _launch_two(out)
    try:
        checkpoint = out / "checkpoint" / "pass1.npz"
        _freeze_at(checkpoint, launcher)
        victim = _child_of(launcher.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)  # process 1 dies without a word, mid-run
        os.killpg(launcher.pid, signal.SIGCONT)
        start = time.monotonic()
        _, err = launcher.communicate(timeout=120)
        stopped_after = time.monotonic() - start
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    err = err.decode()
    assert launcher.returncode != 0, err[-2000:]
    assert "process 1 was killed by SIGKILL; stopping the other 1" in err
    assert "Traceback" not in err, err[-2000:]  # the survivor says what happened in a line
    assert stopped_after < 60  # the survivor is stopped, not left waiting on its peer
    _resumes_like(out, checkpoint, uninterrupted)


def test_an_unanswered_coordinator_fails_in_time_naming_it(tmp_path):
    port = free_port()
    start = time.monotonic()
    run = subprocess.run(
        CLI + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
               "1", "models"], env=dict(os.environ, JAX_PLATFORMS="cpu", CNNVIS_JOIN_TIMEOUT="3"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert f"could not join the process group at 127.0.0.1:{port} within 3 s" in run.stderr
    assert time.monotonic() - start < 60


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-processes", "2", "--process-id", "2"], "process id 2 is out of range"),
        (["--num-processes", "2"], "together"),
        (["--process-id", "0", "--num-processes", "0"], "at least 1"),
    ],
)
def test_bad_process_settings_are_refused_before_connecting(flags, message, capsys):
    assert main(["--coordinator", "127.0.0.1:1", *flags, "models"]) == 2
    assert message in capsys.readouterr().err


def test_processes_started_differently_are_refused_naming_the_difference(tmp_path):
    base = CLI + ["dissect", "--model", "conceptnet", "--layers", "conv5", "--quiet",
                  "--out", str(tmp_path / "x")]  # fmt: skip
    runs = _run_pair([base + ["--count", "16"], base + ["--count", "32"]], timeout=120)
    for rc, _, err in runs:
        assert rc == 2, err[-2000:]
        assert "command line differs" in err and "--count 16" in err and "--count 32" in err


def test_launch_refuses_bad_arguments(capsys):
    assert main(["launch", "--processes", "0", "--", "models"]) == 2
    assert "--processes must be at least 1" in capsys.readouterr().err
    assert main(["launch", "--processes", "2"]) == 2
    assert "give the command to run after --" in capsys.readouterr().err
