"""Concept relevance propagation: the layer handle, conditional heatmaps, relevance
maximization, the per-prediction view and ``cnnvis explain``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnvis_jax.crp import (
    concept_masks,
    concept_relevance,
    conditioned_forward,
    explain,
    top_relevance,
    write_explanation,
)
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import InputContract, from_function

SIZE = 12
DN = ("NHWC", "HWIO", "NHWC")
CONTRACT = InputContract(size=(SIZE, SIZE), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def _params(seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    return {
        "k1": jax.random.normal(k1, (3, 3, 3, 6)) * 0.5,
        "k2": jax.random.normal(k2, (3, 3, 6, 5)) * 0.3,
        "b2": jax.random.normal(k3, (5,)) * 0.1,
        "w": jax.random.normal(k4, (5, 4)),
    }


def _forward(p, x):
    """conv (6) -> ReLU -> conv (5, bias) -> ReLU -> mean over positions -> dense (4)."""
    c1 = jax.nn.relu(jax.lax.conv_general_dilated(x, p["k1"], (1, 1), "SAME", dimension_numbers=DN))
    c2_pre = jax.lax.conv_general_dilated(c1, p["k2"], (1, 1), "SAME", dimension_numbers=DN)
    c2 = jax.nn.relu(c2_pre + p["b2"])
    return {"c1": c1, "c2": c2, "logits": c2.mean(axis=(1, 2)) @ p["w"]}


def _model(fn=_forward):
    return from_function(fn, _params(), input=CONTRACT, name="tiny",
                         layer_names=("c1", "c2", "logits"), logits_layer="logits",
                         class_names=("a", "b", "c", "d"))  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    return _model()


def _images(n=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


class ArraySource:
    """A random-access source over uint8 images (N, H, W, 3)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "target": -1}


def test_conditioned_forward_keeps_values_and_reads_the_layer_cotangent(tiny):
    x = jnp.asarray(_images())
    f = conditioned_forward(tiny, "c2", x)
    a = tiny.apply(tiny.params, x, "c2")["c2"]
    logits = f(tiny.params, x, a)
    np.testing.assert_array_equal(logits, tiny.apply(tiny.params, x, "logits")["logits"])
    cot = jax.nn.one_hot(jnp.array([0, 1, 3]), 4) * logits
    r_layer = jax.vjp(lambda v: f(tiny.params, x, v), a)[1](cot)[0]
    # logits = mean_{h,w}(c2) @ w, so the cotangent at c2 is (cot @ w.T) / (h * w) everywhere
    expected = (cot @ tiny.params["w"].T)[:, None, None, :] / SIZE**2
    np.testing.assert_allclose(r_layer, jnp.broadcast_to(expected, r_layer.shape), rtol=1e-5,
                               atol=1e-7)  # fmt: skip
    # the layers below no longer reach the output
    assert not np.any(jax.grad(lambda v: f(tiny.params, v, a).sum())(x))


def test_conditioned_forward_enters_jitted_models():
    model = _model(jax.jit(_forward))
    x = jnp.asarray(_images())
    f = conditioned_forward(model, "c1", x)
    a = model.apply(model.params, x, "c1")["c1"]
    np.testing.assert_allclose(f(model.params, x, a), model.apply(model.params, x, "logits")["logits"],
                               rtol=1e-6)  # fmt: skip
    cot = jnp.ones((3, 4))
    through_handle = jax.vjp(lambda v: f(model.params, x, v), a)[1](cot)[0]
    p = model.params

    def by_hand(c1):  # the layers above c1, written out
        c2 = jax.nn.relu(jax.lax.conv_general_dilated(c1, p["k2"], (1, 1), "SAME",
                                                      dimension_numbers=DN) + p["b2"])  # fmt: skip
        return c2.mean(axis=(1, 2)) @ p["w"]

    expected = jax.vjp(by_hand, a)[1](cot)[0]
    np.testing.assert_allclose(through_handle, expected, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(expected).max()) > 0


@pytest.mark.parametrize("rule", ["gradient"])
def test_concept_heatmaps_partition_the_heatmap(tiny, rule):
    """Rules linear in the cotangent (gradient, LRP) split the heatmap into concepts."""
    images = _images()
    res = concept_relevance(tiny, images, [0, 1, 2], "c2", rule=rule, concepts=list(range(5)))
    assert res.heatmap.shape == (3, SIZE, SIZE)
    assert res.concept_heatmaps.shape == (3, 5, SIZE, SIZE)
    np.testing.assert_allclose(res.concept_heatmaps.sum(1), res.heatmap, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.channel_relevance, res.layer_relevance.sum(axis=(1, 2)),
                               rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(res.concept_relevance, res.channel_relevance, rtol=1e-6)
    # a concept of two channels is the sum of the two one-channel concepts
    pair = concept_relevance(tiny, images, [0, 1, 2], "c2", rule=rule, concepts=[[1, 3]])
    np.testing.assert_allclose(pair.concept_heatmaps[:, 0],
                               res.concept_heatmaps[:, 1] + res.concept_heatmaps[:, 3],
                               rtol=1e-4, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
@pytest.mark.parametrize("layer", ["c1", "c2"])
def test_lrp_concepts_split_the_lrp_heatmap(tiny, composite, layer):
    from cnnvis_jax import lrp

    images, targets = _images(), np.array([0, 2, 3])
    channels = tiny.layer(layer).channels
    res = concept_relevance(tiny, images, targets, layer, rule=composite,
                            concepts=list(range(channels)))  # fmt: skip
    ref = lrp.relevance(tiny, images, targets, composite)
    # split at any layer, the unconditional map is LRP's own; the concepts partition it
    np.testing.assert_allclose(res.heatmap, np.asarray(ref.pixels), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(res.concept_heatmaps.sum(1), res.heatmap, rtol=1e-4, atol=1e-8)
    assert np.abs(res.heatmap).max() > 0


def test_gradient_heatmap_is_the_normalized_input_gradient(tiny):
    images = _images()
    res = concept_relevance(tiny, images, None, "c2")
    logits = np.asarray(tiny.apply(tiny.params, jnp.asarray(images), "logits")["logits"])
    np.testing.assert_array_equal(res.targets, logits.argmax(-1))
    np.testing.assert_allclose(res.logits, logits, rtol=1e-6)

    def score(z):  # the class score as a function of the normalized input
        out = _forward(tiny.params, z)["logits"]
        return jnp.sum(jax.nn.one_hot(res.targets, 4) * jax.lax.stop_gradient(out) * out)

    grad = jax.grad(score)(CONTRACT.normalize(jnp.asarray(images)))
    np.testing.assert_allclose(res.heatmap, np.asarray(grad).sum(-1), rtol=1e-4, atol=1e-6)


def test_concept_masks():
    model = _model()
    masks = concept_masks(model, "c2", [1, [0, 4]])
    np.testing.assert_array_equal(masks, [[0, 1, 0, 0, 0], [1, 0, 0, 0, 1]])
    assert concept_masks(model, "c2", None).shape == (0, 5)


def test_top_relevance_ranks_by_summed_relevance(tiny):
    images = np.random.default_rng(1).integers(0, 256, (10, SIZE, SIZE, 3), dtype=np.uint8)
    top = top_relevance(tiny, ArraySource(images), "c2", k=3, batch_size=4, progress=False)
    res = concept_relevance(tiny, images.astype(np.float32) / 255.0, None, "c2")
    for u in range(5):
        order = np.lexsort((np.arange(10), -res.channel_relevance[:, u]))[:3]
        np.testing.assert_array_equal(top.image_index[u], order)
        np.testing.assert_allclose(top.values[u], res.channel_relevance[order, u], rtol=1e-4,
                                   atol=1e-7)  # fmt: skip


def test_explain_and_its_files(tiny, tmp_path):
    image = _images(1)[0]
    patches = np.random.default_rng(0).uniform(0, 1, (5, 2, 4, 4, 3)).astype(np.float32)
    e = explain(tiny, image, 2, "c2", top=3, reference_patches=patches,
                labels=["u0", "u1", "u2", "u3", "u4"])  # fmt: skip
    full = concept_relevance(tiny, image[None], [2], "c2").channel_relevance[0]
    np.testing.assert_array_equal(e.units, np.argsort(-full, kind="stable")[:3])
    np.testing.assert_allclose(e.share, full[e.units] / full.sum(), rtol=1e-5)
    assert e.class_name == "c" and e.concept_heatmaps.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(e.references, patches[e.units])
    files = write_explanation(e, tmp_path / "out")
    assert files["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(files["json"].read_text())
    assert [c["unit"] for c in record["concepts"]] == [int(u) for u in e.units]
    assert record["concepts"][0]["label"] == f"u{int(e.units[0])}"


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m, x: concept_relevance(m, x, [0, 1, 2], "logits"), "not below the logits"),
        (lambda m, x: concept_relevance(m, x, [0, 9, 0], "c2"), "class 9 is out of range"),
        (lambda m, x: concept_relevance(m, x, [0], "c2"), "1 targets for 3 images"),
        (lambda m, x: concept_relevance(m, x, None, "c2", rule="nope"), "unknown rule"),
        (lambda m, x: concept_relevance(m, x, None, "c2", concepts=[7]), "unit 7 is out of range"),
        (lambda m, x: concept_relevance(m, x, None, "c2", concepts=[[]]), "has no channel"),
        (lambda m, x: explain(m, x[0], None, "c2", top=9), "top must be between 1 and 5"),
        (lambda m, x: explain(m, x[0], None, "c2", top=2, labels=["a"]), "labels has 1 entries"),
    ],
)
def test_bad_input_raises_one_line(tiny, call, words):
    with pytest.raises(InputError) as info:
        call(tiny, _images())
    message = str(info.value)
    assert words in message and "\n" not in message


def test_explain_command(trained_run, tmp_path, capsys):
    from PIL import Image

    from cnnvis_jax.cli import main

    picture = tmp_path / "house.png"
    Image.fromarray((_images(1, seed=3)[0] * 255).astype(np.uint8)).resize((80, 80)).save(picture)
    weights = str(trained_run / "weights.safetensors")
    out = tmp_path / "explained"
    args = ["explain", "--model", "conceptnet", "--weights", weights, "--image", str(picture),
            "--class", "house", "--layer", "conv5", "--top", "3", "--images", "40", "--refs", "2",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    record = json.loads((out / "explanation.json").read_text())
    assert record["class"] == "house" and record["rule"] == "epsilon_plus_flat"
    assert len(record["concepts"]) == 3
    assert Image.open(out / "explanation.png").size[0] > 200
    assert "conv5:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--class", "hous"], "unknown class 'hous'"),
        (["--class", "99"], "class 99 is out of range"),
        (["--rule", "lrp"], "unknown rule 'lrp'"),
        (["--top", "0"], "--top must be at least 1"),
        (["--layer", "conv9"], "no layer 'conv9'"),
        (["--image", "missing.png"], "is not a file"),
    ],
)
def test_explain_command_bad_input(trained_run, tmp_path, capsys, extra, message):
    from PIL import Image

    from cnnvis_jax.cli import main

    picture = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(picture)
    args = ["explain", "--model", "conceptnet", "--weights",
            str(trained_run / "weights.safetensors"), "--image", str(picture), "--layer",
            "conv5", "--out", str(tmp_path / "o"), "--quiet", *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_no_classifier_is_refused():
    model = from_function(lambda p, x: {"c": x * p}, jnp.float32(2.0), input=CONTRACT)
    with pytest.raises(InputError, match="no logits layer"):
        conditioned_forward(model, "c", jnp.zeros((1, SIZE, SIZE, 3)))


def test_alexnet_concepts_match_zennit_crp_golden():
    """Conditional heatmaps and conv5 channel relevances of zennit-crp (CondAttribution,
    EpsilonPlusFlat, float64; benchmarks/make_crp_golden.py) on AlexNet at 224 px."""
    import importlib.util
    from pathlib import Path

    from cnnvis_jax import weights
    from cnnvis_jax.zoo import registry

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "make_lrp_golden", root / "benchmarks" / "make_lrp_golden.py"
    )
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    golden = np.load(root / "tests" / "golden" / "lrp_alexnet" / "crp_conv5.npz")
    model = registry.as_model(
        weights.load_torch_state_dict("alexnet", recipe.alexnet_state_dict()), "alexnet"
    )
    res = concept_relevance(model, recipe.golden_images(), golden["targets"], "conv5",
                            rule="epsilon_plus_flat",
                            concepts=[int(c) for c in golden["concepts"]])  # fmt: skip

    def relative(ours, theirs):
        return float(np.abs(ours - theirs).max() / np.abs(theirs).max())

    assert relative(res.concept_heatmaps, golden["heatmaps"]) < 1e-5
    assert relative(res.channel_relevance, golden["channel_relevance"]) < 1e-5


def test_handles_follow_the_forward_order_not_the_names():
    """Layer names that sort after the logits' (a traced dict comes back sorted)."""
    from cnnvis_jax.crp.condition import perturbed_forward

    def renamed(p, x):
        out = _forward(p, x)
        return {"z_c1": out["c1"], "y_c2": out["c2"], "logits": out["logits"]}

    model = from_function(renamed, _params(), input=CONTRACT, layer_names=("z_c1", "y_c2", "logits"),
                          logits_layer="logits")  # fmt: skip
    x = jnp.asarray(_images())
    a = model.apply(model.params, x, "z_c1")["z_c1"]
    f = conditioned_forward(model, "z_c1", x)
    np.testing.assert_allclose(f(model.params, x, a), model.apply(model.params, x, "logits")["logits"],
                               rtol=1e-6)  # fmt: skip
    g = perturbed_forward(model, ("z_c1", "y_c2"), "logits", x)
    zeros = (jnp.zeros_like(a), jnp.zeros((3, SIZE, SIZE, 5)))
    grads = jax.grad(lambda d: g(model.params, x, d)[:, 1].sum())(zeros)
    c2 = model.apply(model.params, x, "y_c2")["y_c2"]
    by_hand = jax.grad(lambda v: (v.mean(axis=(1, 2)) @ model.params["w"])[:, 1].sum())(c2)
    np.testing.assert_allclose(grads[1], by_hand, rtol=1e-5, atol=1e-8)
    assert float(jnp.abs(grads[0]).max()) > 0
