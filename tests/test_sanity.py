"""Sanity checks (Adebayo et al. 2018): similarity measures, layer randomization,
saliency under the backward rules, the two randomization tests, shuffled-label training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cnnvis_jax.errors import InputError
from cnnvis_jax.evaluate import sanity
from cnnvis_jax.model import InputContract, from_function

SIZE = 16
CONTRACT = InputContract(size=(SIZE, SIZE), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def linear_model(classes=4, seed=0):
    """logits = x_normalized . W + b: the only parameterized layer is ``fc``."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "fc": {
            "kernel": jax.random.normal(k1, (SIZE * SIZE * 3, classes)) * 0.05,
            "bias": jax.random.normal(k2, (classes,)),
        }
    }

    def fn(p, x):
        return {"fc": x.reshape(x.shape[0], -1) @ p["fc"]["kernel"] + p["fc"]["bias"]}

    return from_function(
        fn,
        params,
        input=CONTRACT,
        name="linear",
        class_names=[f"c{i}" for i in range(classes)],
        logits_layer="fc",
    )


def relu_model(seed=0):
    """conv 3x3 (ReLU) -> max-pool 2x2 (no parameters) -> dense to 3 classes."""
    keys = jax.random.split(jax.random.key(seed), 3)
    params = {
        "conv": {
            "kernel": jax.random.normal(keys[0], (3, 3, 3, 6)) * 0.4,
            "bias": jax.random.normal(keys[1], (6,)) * 0.1,
        },
        "fc": {"kernel": jax.random.normal(keys[2], (8 * 8 * 6, 3)) * 0.05, "bias": jnp.zeros(3)},
    }

    def fn(p, x):
        c = jax.lax.conv_general_dilated(
            x, p["conv"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        conv = jax.nn.relu(c + p["conv"]["bias"])
        pool = jax.lax.reduce_window(
            conv, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
        )
        fc = pool.reshape(x.shape[0], -1) @ p["fc"]["kernel"] + p["fc"]["bias"]
        return {"conv": conv, "pool": pool, "fc": fc}

    return from_function(
        fn, params, input=CONTRACT, name="relu", class_names=["a", "b", "c"], logits_layer="fc"
    )


def tiny_recipe():
    """Pixel ascent with Adam, no transforms: the cheapest activation maximization."""
    from cnnvis_jax.am import Adam, Pixel, Recipe

    return Recipe(name="tiny", steps=4, param=Pixel("unit", 128.0, 20.0), optimizer=Adam(0.1))


@pytest.fixture(scope="module")
def images():
    return np.asarray(jax.random.uniform(jax.random.key(7), (5, SIZE, SIZE, 3)), np.float32)


@pytest.fixture(scope="module")
def net():
    return relu_model()


# --- similarity measures ---------------------------------------------------------------


def test_ssim_of_a_map_with_itself_is_one_and_matches_a_constant_pair():
    a = np.asarray(jax.random.uniform(jax.random.key(0), (3, 20, 24)))
    np.testing.assert_allclose(sanity.ssim(a, a), 1.0, atol=1e-6)
    # constant maps: sigma = cov = 0, so SSIM = (2 c d + C1) / (c^2 + d^2 + C1)
    c, d, c1 = 0.2, 0.7, (0.01 * 1.0) ** 2
    pair = sanity.ssim(np.full((1, 12, 12), c), np.full((1, 12, 12), d))
    np.testing.assert_allclose(pair, (2 * c * d + c1) / (c * c + d * d + c1), rtol=1e-5)


def test_ssim_equals_the_scikit_image_reference():
    from skimage.metrics import structural_similarity

    a = np.asarray(jax.random.uniform(jax.random.key(1), (2, 24, 19)))
    b = np.clip(a + 0.3 * np.asarray(jax.random.normal(jax.random.key(2), a.shape)), 0, 1)
    expected = [
        structural_similarity(
            x.astype(np.float64),
            y.astype(np.float64),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for x, y in zip(a, b)
    ]
    np.testing.assert_allclose(sanity.ssim(a, b), expected, atol=2e-5)


def test_spearman_of_identical_reversed_and_tied_maps():
    a = np.asarray(jax.random.normal(jax.random.key(3), (2, 7, 9)))
    np.testing.assert_allclose(sanity.spearman(a, a), 1.0, atol=1e-6)
    np.testing.assert_allclose(sanity.spearman(a, -a), -1.0, atol=1e-6)
    tied = np.round(a * 2) / 2  # many ties: average ranks, as scipy
    other = np.round(np.asarray(jax.random.normal(jax.random.key(4), a.shape)))
    expected = [stats.spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(tied, other)]
    np.testing.assert_allclose(sanity.spearman(tied, other), expected, atol=1e-5)
    assert np.isnan(sanity.spearman(np.zeros((1, 4)), np.arange(4.0)[None]))[0]


def test_normalize_map_sends_the_minimum_to_0_and_the_99th_percentile_to_1():
    x = np.arange(100.0).reshape(1, 10, 10) + 3.0  # 99th percentile: 3 + 98.01
    out = sanity.normalize_map(x)
    np.testing.assert_allclose(out[0, 0, :3], [0.0, 1 / 98.01, 2 / 98.01], rtol=1e-5)
    assert out[0, -1, -1] == 1.0 and out[0, -1, -2] == pytest.approx(98 / 98.01)
    assert np.all(sanity.normalize_map(np.full((1, 4, 4), 5.0)) == 0)


# --- layer randomization ---------------------------------------------------------------


def test_layers_owning_parameters_are_found_in_catalog_order(net):
    assert sanity.parameterized_layers(net) == ("conv", "fc")
    assert sanity.layer_parameters(net)["fc"] == ("fc.bias", "fc.kernel")


def test_randomization_touches_exactly_the_chosen_layers_and_is_deterministic(net):
    top = sanity.randomize_layers(net, ["fc"], key=3)
    for name in ("kernel", "bias"):  # below the cut: unchanged
        np.testing.assert_array_equal(top.params["conv"][name], net.params["conv"][name])
    assert not np.array_equal(top.params["fc"]["kernel"], net.params["fc"]["kernel"])
    again = sanity.randomize_layers(net, "fc", key=jax.random.PRNGKey(3))
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.params, top.params)
    other = sanity.randomize_layers(net, ["fc"], key=4)
    assert not np.array_equal(other.params["fc"]["kernel"], top.params["fc"]["kernel"])
    # the same layer gets the same draw whatever else is re-drawn
    both = sanity.randomize_layers(net, ["conv", "fc"], key=3)
    np.testing.assert_array_equal(both.params["fc"]["kernel"], top.params["fc"]["kernel"])
    # He normal for kernels, zeros for biases
    kernel = np.asarray(both.params["conv"]["kernel"])
    assert kernel.std() == pytest.approx(np.sqrt(2 / 27), rel=0.15)
    assert np.all(np.asarray(both.params["conv"]["bias"]) == 0)


def test_layers_of_an_nnx_module_are_matched_by_their_paths(images):
    from flax import nnx

    from cnnvis_jax.model import from_nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.features = nnx.List([nnx.Conv(3, 4, (3, 3), rngs=rngs)])
            self.head = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(jax.nn.relu(self.features[0](x)).mean(axis=(1, 2)))

    model = from_nnx(Net(nnx.Rngs(0)), input=CONTRACT, layers=["features.0", "head"])
    assert sanity.parameterized_layers(model) == ("features.0", "head")
    new = sanity.randomize_layers(model, ["head"], key=0)
    old_leaves = dict(jax.tree_util.tree_leaves_with_path(model.params))
    for path, leaf in jax.tree_util.tree_leaves_with_path(new.params):
        name = jax.tree_util.keystr(path)
        if "head" not in name:  # below the cut: unchanged
            np.testing.assert_array_equal(leaf, old_leaves[path])
        elif "kernel" in name:  # re-drawn (the bias is re-set to 0, as it started)
            assert not np.array_equal(leaf, old_leaves[path])
    assert new(images, "head")["head"].shape == (5, 3)


# --- saliency ----------------------------------------------------------------------------


def test_gradient_of_a_linear_model_is_its_weight_column(images):
    model = linear_model()
    new = sanity.randomize_layers(model, ["fc"], key=11)
    maps = sanity.saliency(new, images, "gradient")
    kernel = np.asarray(new.params["fc"]["kernel"])
    x = (images - 0.5) / 0.25
    logits = x.reshape(len(images), -1) @ np.asarray(model.params["fc"]["kernel"])
    for n, c in enumerate(maps.targets):
        # d logit_c / d image = W[:, c] / std (images are normalized before the layer)
        grad = kernel[:, c].reshape(SIZE, SIZE, 3) / 0.25
        np.testing.assert_allclose(maps.signed[n], grad.sum(-1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maps.absolute[n], np.abs(grad).sum(-1), rtol=1e-5, atol=1e-6)
    # targets follow the randomized model when it is the one asked; the cascade below
    # keeps the trained model's prediction instead
    result = sanity.cascading_randomization(model, images, methods="gradient", key=11)
    trained = np.argmax(logits + np.asarray(model.params["fc"]["bias"]), -1)
    np.testing.assert_array_equal(result.targets, trained)
    old = np.asarray(model.params["fc"]["kernel"])
    expected = [
        stats.spearmanr(old[:, c].reshape(-1, 3).sum(-1), kernel[:, c].reshape(-1, 3).sum(-1))[0]
        for c in trained
    ]
    np.testing.assert_allclose(result.spearman["gradient"][1], expected, atol=1e-5)
    assert result.steps == ("original", "fc") and result.randomized == ((), ("fc",))


def test_the_rules_differ_on_a_relu_network(net, images):
    maps = {m: sanity.saliency(net, images, m, classes=[0] * 5) for m in sanity.RULE_METHODS}
    assert not np.allclose(maps["gradient"].signed, maps["guided"].signed)
    assert not np.allclose(maps["deconvnet"].signed, maps["guided"].signed)
    assert np.all(maps["gradient"].absolute >= np.abs(maps["gradient"].signed) - 1e-6)


def test_cascade_without_randomization_is_identical_and_curves_fall(net, images, tmp_path):
    result = sanity.cascading_randomization(
        net, images, methods=sanity.METHODS, key=1, am_recipe=tiny_recipe(), am_classes=[0, 2]
    )
    assert result.steps == ("original", "fc", "conv")
    assert result.randomized == ((), ("fc",), ("fc", "conv"))
    curves = result.curves()
    for method in sanity.METHODS:
        for metric in sanity.METRICS:
            assert curves[method][metric][0] == pytest.approx(1.0, abs=1e-5), (method, metric)
        assert curves[method]["spearman_abs"][-1] < 0.9, method
    assert result.spearman["am"].shape == (3, 2) and result.am_images.shape == (3, 2, 16, 16, 3)
    out = result.save(tmp_path)
    record = json.loads((out / "results.json").read_text())
    assert record["kind"] == "cascading" and record["steps"] == ["original", "fc", "conv"]
    assert record["curves"]["guided"][0]["spearman"] == pytest.approx(1.0, abs=1e-5)
    assert (out / "sanity.png").stat().st_size > 0 and (out / "maps.png").stat().st_size > 0


def test_independent_randomization_redraws_one_layer_per_step(net, images, tmp_path):
    result = sanity.cascading_randomization(
        net, images, methods=["gradient"], cumulative=False, key=2, examples=0
    )
    assert result.kind == "independent"
    assert result.randomized == ((), ("fc",), ("conv",))
    out = result.save(tmp_path)
    assert (out / "results.json").exists() and not (out / "maps.png").exists()


def test_data_randomization_of_a_model_with_itself_and_with_another(net, images):
    same = sanity.data_randomization(net, net, images, methods=["guided"])
    np.testing.assert_allclose(same.spearman["guided"], 1.0, atol=1e-5)
    assert same.steps == ("trained", "shuffled labels")
    other = sanity.data_randomization(net, relu_model(seed=5), images, methods=["gradient"])
    assert other.curves()["gradient"]["spearman"][1] < 0.9
    with pytest.raises(InputError, match="differ in layers"):
        sanity.data_randomization(net, linear_model(), images)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": ["gradiant"]}, "unknown method 'gradiant'.*gradient"),
        ({"methods": []}, "methods is empty"),
        ({"layers": ["fc9"]}, "no layer 'fc9'"),
        ({"layers": ["pool"]}, "layer 'pool' .* has no parameters"),
        ({"classes": [0, 1]}, "classes has 2 entries for 5 images"),
        ({"classes": [9] * 5}, "class 9 is out of range|unit 9 is out of range"),
    ],
)
def test_bad_arguments_raise_one_line_input_errors(net, images, kwargs, message):
    with pytest.raises(InputError, match=message) as info:
        sanity.cascading_randomization(net, images, **kwargs)
    assert "\n" not in str(info.value)


def test_empty_or_malformed_images_are_refused(net):
    with pytest.raises(InputError, match="images is empty"):
        sanity.cascading_randomization(net, np.zeros((0, SIZE, SIZE, 3), np.float32))
    with pytest.raises(InputError, match="expects 16x16"):
        sanity.cascading_randomization(net, np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match="smaller than SSIM's 11x11 window"):
        sanity.ssim(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))


# --- shuffled-label training -------------------------------------------------------------


def test_label_permutation_is_fixed_by_the_seed_and_applied_to_the_targets():
    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.train import TrainConfig
    from cnnvis_jax.train.loop import _training_batch, label_permutation

    config = TrainConfig(epochs=1, train_size=64, val_size=32, batch_size=32, shuffle_labels=True)
    perm = label_permutation(config, 64)
    np.testing.assert_array_equal(perm, label_permutation(config, 64))
    assert sorted(perm.tolist()) == list(range(64)) and np.any(perm != np.arange(64))
    other = label_permutation(TrainConfig(**{**config.to_json(), "seed": 1}), 64)
    assert not np.array_equal(perm, other)
    assert (
        label_permutation(TrainConfig(**{**config.to_json(), "shuffle_labels": False}), 64) is None
    )
    source = ConceptSet(64, seed=config.data_seed)
    idx = np.arange(8, 16)
    batch = _training_batch(source, idx, perm)
    np.testing.assert_array_equal(batch["image"], source.batch(idx)["image"])
    np.testing.assert_array_equal(batch["target"], source.batch(perm[idx])["target"])
    assert (
        config.fingerprint()
        != TrainConfig(**{**config.to_json(), "shuffle_labels": False}).fingerprint()
    )
    with pytest.raises(InputError, match="shuffle_labels must be True or False"):
        TrainConfig(shuffle_labels="yes")


TINY_RUN = dict(epochs=1, train_size=64, val_size=32, batch_size=32, snapshot_epochs=(1,))


def test_shuffled_label_training_differs_from_the_normal_run():
    """Two optimizer steps from one initialization, on the batches ``train`` draws."""
    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.train import TrainConfig
    from cnnvis_jax.train.loop import Trainer, _training_batch, epoch_order, label_permutation

    config = TrainConfig(**TINY_RUN, shuffle_labels=True)
    source = ConceptSet(config.train_size, seed=config.data_seed)
    trainer = Trainer(config, len(source.class_names))
    start = jax.tree_util.tree_map(np.array, trainer.state_dict())
    order, b = epoch_order(config, 1), config.batch_size
    params = {}
    for perm in (None, label_permutation(config, len(source))):
        trainer.load_state_dict(jax.tree_util.tree_map(np.array, start), 0)
        for k in range(config.steps_per_epoch):  # the first has learning rate 0 (warm-up)
            batch = _training_batch(source, order[k * b : (k + 1) * b], perm)
            trainer.train_batch(batch["image"], batch["target"])
        params[perm is None] = jax.tree_util.tree_map(np.array, trainer.state_dict()["params"])
    true, shuffled = params[True], params[False]
    assert not np.array_equal(true["fc8"]["kernel"], shuffled["fc8"]["kernel"])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("shuffle", [False, True])
def test_train_feeds_the_shuffled_labels(tmp_path, monkeypatch, shuffle):
    """``train`` passes the permuted targets to the optimizer step (stopped at step 1)."""
    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.train import TrainConfig, loop, train

    fed = []

    def record(self, images, targets):
        fed.append(np.asarray(targets))
        raise _Stop

    monkeypatch.setattr(loop.Trainer, "calibrate", lambda self, images: None)
    monkeypatch.setattr(loop.Trainer, "train_batch", record)
    config = TrainConfig(**TINY_RUN, shuffle_labels=shuffle)
    with pytest.raises(_Stop):
        train(config, tmp_path / "run", progress=False, report=False)
    first = loop.epoch_order(config, 1)[: config.batch_size]
    source = ConceptSet(config.train_size, seed=config.data_seed)
    drawn = loop.label_permutation(config, len(source))[first] if shuffle else first
    np.testing.assert_array_equal(fed[0], source.batch(drawn)["target"])
    assert shuffle == (not np.array_equal(fed[0], source.batch(first)["target"]))
    # the option is part of the run's identity: the other setting cannot resume this run
    other = TrainConfig(**TINY_RUN, shuffle_labels=not shuffle)
    with pytest.raises(InputError, match="another configuration"):
        train(other, tmp_path / "run", progress=False)
