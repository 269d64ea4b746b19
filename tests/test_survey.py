"""``cnnvis survey``: every stage on a tiny network, resume after a kill, the findings'
numbers come from the JSON beside them, and bad input."""

from __future__ import annotations

import dataclasses
import errno
import html
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

sys.path.insert(0, str(Path(__file__).parent))
from test_dissection_tally import make_source, tiny_model  # noqa: E402

from cnnvis_jax.errors import InputError  # noqa: E402
from cnnvis_jax.model import InputContract, from_function  # noqa: E402
from cnnvis_jax.survey import STAGES, OutputError, SurveyConfig, run_survey  # noqa: E402
from cnnvis_jax.survey import stages as survey_stages  # noqa: E402

TINY = SurveyConfig(
    layers=2, sample_images=12, am_units=2, am_presets=("yosinski2",), am_steps=6, classes=2,
    deconv_images=12, deconv_top=2, inversion_presets=("mahendran2015",), inversion_steps=6,
    decoder_steps=4,
    dissection_images=24, net2vec_train=8, net2vec_val=8, net2vec_epochs=1, diagnosis_images=12,
    robustness_images=6, robustness_steps=2,
    beyond_images=24, beyond_explained=1, beyond_concepts=2, beyond_refs=2, beyond_grid=2,
    beyond_points=60, beyond_steps=2,
)  # fmt: skip


def relu_apply(params, x):
    """The tiny two-layer network of the dissection tests with ReLUs."""
    dn = ("NHWC", "HWIO", "NHWC")
    c1 = lax.conv_general_dilated(x, params["w1"], (2, 2), "SAME", dimension_numbers=dn)
    a1 = jax.nn.relu(c1 + params["b1"])
    c2 = lax.conv_general_dilated(a1, params["w2"], (2, 2), "SAME", dimension_numbers=dn)
    a2 = jax.nn.relu(c2 + params["b2"])
    return {"conv1": a1, "conv2": a2, "fc": a2.reshape(a2.shape[0], -1)[:, :3]}


def classifier():
    """A tiny two-layer ReLU network with its 3 outputs named as classes."""
    return from_function(relu_apply, tiny_model().params, input=InputContract(size=(16, 16)),
                         name="tiny", class_names=("a", "b", "c"), logits_layer="fc")  # fmt: skip


@pytest.fixture(scope="module")
def source():
    return make_source(n=24, seg=12)


@pytest.fixture(scope="module")
def surveyed(tmp_path_factory, source):
    out = tmp_path_factory.mktemp("survey")
    result = run_survey(classifier(), source, out, TINY, progress=False)
    return out, result


def _files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and ".checkpoints" not in p.parts
        and p.name != "timings.json" and not any(part.endswith(".partial") for part in p.parts)
    }  # fmt: skip


PART = ("network", "am", "deconv")  # the stages the interruption tests run


def _stage_files(out: Path, stages) -> dict[str, bytes]:
    return {k: v for k, v in _files(out).items() if k.split("/")[0] in stages}


def test_every_stage_writes_its_section(surveyed):
    out, result = surveyed
    assert result["stages"] == list(STAGES)
    page = (out / "index.html").read_text()
    for stage in STAGES:
        record = json.loads((out / stage / "record.json").read_text())
        assert f'id="{stage}"' in page
        for src, _ in record["figures"]:
            assert (out / stage / src).is_file(), (stage, src)
            assert f'src="{stage}/{src}"' in page
    assert (out / "dissection" / "dissection" / "conv2" / "tally.csv").is_file()
    assert json.loads((out / "am" / "record.json").read_text())["data"]["classes"]["classes"] == [
        "a", "b"
    ]  # fmt: skip
    assert (out / "findings.csv").read_text().startswith("claim,held,statistic")


def test_findings_numbers_come_from_the_json_beside_them(surveyed):
    out, result = surveyed
    assert json.loads((out / "findings.json").read_text()) == result["findings"]
    assert len(result["findings"]) >= 4
    check_findings_numbers(out)


def check_findings_numbers(out: Path) -> None:
    """Every number of every statistic is one of the claim's values, and each value is
    what its path names in the stage record beside the report."""
    found = json.loads((out / "findings.json").read_text())
    number = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
    for f in found:
        for v in f["values"]:
            stage_file, _, keys = v["path"].partition("#")
            value = json.loads((out / stage_file).read_text())
            for k in keys.split("."):
                value = value[int(k)] if isinstance(value, list) else value[k]
            assert value == v["value"], v
        shown = {float(m) for m in number.findall(f["statistic"])}
        assert shown <= {float(v["value"]) for v in f["values"]}, (f["statistic"], f["values"])
    page = (out / "index.html").read_text()
    for f in found:
        assert html.escape(f["statistic"]) in page and html.escape(f["claim"]) in page


def test_rerun_skips_finished_stages_and_only_reruns(surveyed, source, monkeypatch):
    out, _ = surveyed
    before = _files(out)
    calls = []
    for stage in STAGES:
        fn = survey_stages.STAGE_FUNCTIONS[stage]
        monkeypatch.setitem(survey_stages.STAGE_FUNCTIONS, stage,
                            lambda ctx, o, fn=fn, stage=stage: calls.append(stage) or fn(ctx, o))  # fmt: skip
    run_survey(classifier(), source, out, TINY, progress=False)
    assert calls == []
    run_survey(classifier(), source, out, TINY, only=["network"], progress=False)
    assert calls == []  # finished: kept
    run_survey(classifier(), source, out, TINY, only=["network"], rerun=True, progress=False)
    assert calls == ["network"]
    assert _files(out) == before  # same seed, same files


def test_a_full_disk_keeps_finished_stages_and_resumes(tmp_path, source, surveyed, monkeypatch):
    def full(ctx, out):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(survey_stages.STAGE_FUNCTIONS, "deconv", full)
    with pytest.raises(OutputError, match="No space left.*finished stages are kept"):
        run_survey(classifier(), source, tmp_path, TINY, only=PART, progress=False)
    assert (tmp_path / "am" / "record.json").is_file()
    assert not (tmp_path / "deconv").exists()
    monkeypatch.undo()
    calls = []
    fn = survey_stages.STAGE_FUNCTIONS["am"]
    monkeypatch.setitem(survey_stages.STAGE_FUNCTIONS, "am",
                        lambda ctx, o: calls.append("am") or fn(ctx, o))  # fmt: skip
    run_survey(classifier(), source, tmp_path, TINY, only=PART, progress=False)
    assert calls == []  # the finished stage was kept
    # and the result equals an uninterrupted run
    assert _stage_files(tmp_path, PART) == _stage_files(surveyed[0], PART)


def test_bad_input(tmp_path, source, surveyed):
    with pytest.raises(InputError, match="unknown stages"):
        run_survey(classifier(), source, tmp_path / "a", TINY, only=["amm"], progress=False)
    flat = from_function(lambda p, x: {"fc": x.reshape(x.shape[0], -1)[:, :3]}, {},
                         input=InputContract(size=(16, 16)))  # fmt: skip
    with pytest.raises(InputError, match="no spatial layer"):
        run_survey(flat, source, tmp_path / "b", TINY, progress=False)
    other = dataclasses.replace(classifier(), params=jax_tree_scale(classifier().params, 2.0))
    with pytest.raises(InputError, match="holds the survey of weights"):
        run_survey(other, source, surveyed[0], TINY, only=["network"], progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        run_survey(classifier(), source, tmp_path / "file", TINY, progress=False)


def jax_tree_scale(tree, factor):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a) * factor, tree)


def test_unlabelled_data_skips_dissection_with_a_note(tmp_path, source):
    from cnnvis_jax.hub.gallery import ArraySource

    images = ArraySource(np.asarray(source.images))
    run_survey(classifier(), images, tmp_path, TINY, only=["dissection"], progress=False)
    record = json.loads((tmp_path / "dissection" / "record.json").read_text())
    assert record["figures"] == [] and "no concept masks" in record["notes"][0]
    assert "no concept masks" in (tmp_path / "index.html").read_text()


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_survey import PART, TINY, classifier
from test_dissection_tally import make_source
from cnnvis_jax.survey import run_survey
run_survey(classifier(), make_source(n=24, seg=12), {out!r}, TINY, only=PART, progress=False)
"""


def test_killed_survey_resumes_to_the_same_files(tmp_path, source, surveyed):
    import os
    import signal
    import subprocess
    import time

    code = CHILD.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "am" / "record.json").exists():  # killed in a later stage
            assert child.poll() is None and time.time() < deadline, child.stderr.read()[-2000:]
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    run_survey(classifier(), source, tmp_path, TINY, only=PART, progress=False)  # the same call
    assert _stage_files(tmp_path, PART) == _stage_files(surveyed[0], PART)


@pytest.mark.skipif(not __import__("browser").chromium(), reason="needs chromium (apt)")
def test_report_opens_in_a_browser_without_broken_images_links_or_errors(surveyed):
    from browser import check_page, local_targets

    out, _ = surveyed
    shot = out / "screenshot.png"
    pages = [out / "index.html"] + [out / t for t in local_targets(out / "index.html")
                                    if t.endswith(".html")]  # fmt: skip
    assert len(pages) >= 3  # the report and the dissection pages it links
    for page in pages:
        problems = check_page(
            page, shot if page.name == "index.html" and page.parent == out else None
        )
        assert problems == {"missing": [], "errors": [], "broken": []}, (page, problems)
    assert shot.stat().st_size > 10_000


def test_cli_errors_are_one_line_before_any_work(tmp_path, capsys):
    from cnnvis_jax.cli import main

    assert main(["survey", "--only", "am,dissectoin", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'dissectoin'" in err and "dissection" in err and err.count("\n") == 1
    assert main(["survey", "--out", ""]) == 2
    assert "--out must name a folder" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_trained_model_gets_curves_mfv_and_monitoring(trained_run, trained_conceptnet, tmp_path):
    from cnnvis_jax.data.concepts import ConceptSet

    config = dataclasses.replace(
        TINY, mfv_classes=1, mfv_facets=2, mfv_images=64, monitor_units=2,
        conditions_variants=("baseline", "conv1_11x11_stride4"),
        conditions_images=48, robustness_images=16, net2vec_train=32, net2vec_val=16,
    )  # fmt: skip
    source = ConceptSet(64, split="val")
    # the stages that use the run's data (and robustness, which reads the dissection)
    stages = ["network", "am", "decoders", "dissection", "monitoring", "conditions", "robustness"]
    run_survey(trained_conceptnet, source, tmp_path, config, only=stages, run_dir=trained_run,
               progress=False)  # fmt: skip
    network = json.loads((tmp_path / "network" / "record.json").read_text())
    assert ["curves.png", "training accuracy and loss per epoch"] in network["figures"]
    am = json.loads((tmp_path / "am" / "record.json").read_text())
    assert len(am["data"]["mfv"]["classes"]) >= 1
    assert any(src.startswith("mfv_") for src, _ in am["figures"])
    monitoring = json.loads((tmp_path / "monitoring" / "record.json").read_text())
    assert monitoring["data"]["epochs"] == [1, 2]
    assert [s for s, _ in monitoring["figures"]] == ["monitor.png", "am_epochs.png"]
    assert (tmp_path / "monitoring" / "monitor.json").is_file()
    decoders = json.loads((tmp_path / "decoders" / "record.json").read_text())
    assert set(decoders["data"]["pixel_error"]) == {"conv5", "fc6"}
    assert (
        decoders["data"]["dgn"]["code_layer"] == "fc6"
        and (tmp_path / "decoders" / "dgn.png").is_file()
    )
    claims = [f["claim"] for f in json.loads((tmp_path / "findings.json").read_text())]
    assert any("converge first" in c for c in claims)
    conditions = json.loads((tmp_path / "conditions" / "record.json").read_text())["data"]
    assert list(conditions["variants"]) == ["baseline", "conv1_11x11_stride4"]
    # the baseline is the surveyed run's epoch-1 snapshot, not trained again
    history = json.loads((trained_run / "metrics.json").read_text())["history"]
    assert conditions["variants"]["baseline"]["val_accuracy"] == round(
        history[0]["val_accuracy"], 4
    )
    trained = sorted(
        p.name.split("-")[0] for p in (tmp_path / ".checkpoints" / "conditions").iterdir()
    )
    assert trained == ["conv1_11x11_stride4"]
    assert set(conditions["first_layer"]) == {"baseline", "conv1_11x11_stride4"}
    assert any("first-layer stride" in c for c in claims)
    robustness = json.loads((tmp_path / "robustness" / "record.json").read_text())["data"]
    assert set(robustness["attacks"]) == {"fgsm_eps2", "pgd_eps2", "fgsm_eps8", "pgd_eps8"}
    assert "clean_accuracy" in robustness["attacks"]["pgd_eps8"]  # the concept set has labels
    dissected = json.loads((tmp_path / "dissection" / "record.json").read_text())["data"]
    if dissected["detectors"]["units"]:  # detectors exist: they are compared clean vs attacked
        assert robustness["detectors"]["layer"] == dissected["detectors"]["layer"]
        assert robustness["detectors"]["by_category"]
    else:
        assert "detectors" not in robustness
    assert any("adversarial" in c for c in claims)
    check_findings_numbers(tmp_path)


def test_vgg16_hed_on_natural_images_skips_what_does_not_apply(tmp_path):
    """`cnnvis survey --model vgg16-hed --dataset skimage` in small: no classifier and no
    concept labels, so the class sections, dissection, conditions and robustness are
    notes, and the rest is drawn (HED's converted layout with random weights, 32 px)."""
    from cnnvis_jax.data.skimage_source import SkimageSource
    from cnnvis_jax.hub import convert
    from cnnvis_jax.hub.vgg16_hed import build

    backbone, _ = convert.split_head(convert.read_hed_h5(
        convert.write_fake_h5(tmp_path / "fake.weights.h5", seed=1)))  # fmt: skip
    model = build(backbone, size=(32, 32))
    source = SkimageSource(["astronaut", "coffee", "chelsea", "rocket"], size=(32, 32))
    config = dataclasses.replace(TINY, layers=2, sample_images=4, deconv_images=4,
                                 diagnosis_images=4)  # fmt: skip
    only = ["network", "am", "dissection", "conditions", "robustness"]
    result = run_survey(model, source, tmp_path / "s", config, only=only, progress=False)
    records = {s: json.loads((tmp_path / "s" / s / "record.json").read_text()) for s in only}
    assert records["am"]["figures"] and "classes" not in records["am"]["data"]
    assert any("no concept masks" in n for n in records["dissection"]["notes"])
    assert any("not trained here" in n for n in records["conditions"]["notes"])
    assert any("no classifier" in n for n in records["robustness"]["notes"])
    assert result["findings"] is not None
