"""Adversarial examples: FGSM equals its closed form on a linear classifier, PGD with
one step from the clean image is FGSM, the ball and the image range hold, determinism,
batching, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnvis_jax.errors import InputError
from cnnvis_jax.model import InputContract, from_function
from cnnvis_jax.robustness import Attack, attack, fgsm, margins, pgd

SIZE = (6, 6)


def _linear(params, x):
    return {"logits": x.reshape(x.shape[0], -1) @ params["w"]}


@pytest.fixture(scope="module")
def linear():
    w = jax.random.normal(jax.random.key(0), (SIZE[0] * SIZE[1] * 3, 4))
    return from_function(_linear, {"w": w}, input=InputContract(size=SIZE), name="linear",
                         class_names=("a", "b", "c", "d"), logits_layer="logits")  # fmt: skip


@pytest.fixture(scope="module")
def images():
    # away from 0 and 1, so that a step of epsilon is never clipped by the image range
    return np.asarray(jax.random.uniform(jax.random.key(1), (10, *SIZE, 3), minval=0.3,
                                         maxval=0.7))  # fmt: skip


def test_fgsm_is_the_closed_form_on_a_linear_classifier(linear, images):
    eps = 0.05
    result = attack(linear, images, fgsm(eps), key=jax.random.key(0))
    w = np.asarray(linear.params["w"])
    logits = images.reshape(len(images), -1) @ w
    own = logits.argmax(1)
    others = np.where(np.eye(4, dtype=bool)[own], -np.inf, logits).argmax(1)
    grad = (w[:, own] - w[:, others]).T.reshape(images.shape)  # d margin / d x
    expected = images - eps * np.sign(grad)
    np.testing.assert_allclose(result.images, expected, atol=1e-6)
    np.testing.assert_array_equal(result.attacked, own)
    np.testing.assert_allclose(result.clean_margin, margins(jnp.asarray(logits),
                                                            jnp.asarray(own)), rtol=1e-5)  # fmt: skip


def test_one_pgd_step_from_the_clean_image_is_fgsm(linear, images):
    eps = 0.03
    one = Attack("pgd", eps, steps=1, step_size=eps, random_start=False)
    a = attack(linear, images, one, key=jax.random.key(0))
    b = attack(linear, images, fgsm(eps), key=jax.random.key(0))
    np.testing.assert_array_equal(a.images, b.images)


def test_pgd_stays_in_the_ball_and_the_image_range_and_lowers_the_margin(linear):
    x = np.asarray(jax.random.uniform(jax.random.key(2), (16, *SIZE, 3)))  # touches 0 and 1
    eps = 0.1
    result = attack(linear, x, pgd(eps, steps=8), key=jax.random.key(3))
    assert np.abs(result.images - x).max() <= eps + 1e-6
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    assert np.all(result.margin < result.clean_margin)
    np.testing.assert_array_equal(result.success, result.margin < 0)
    assert result.success_rate == pytest.approx(np.mean(result.success))
    again = attack(linear, x, pgd(eps, steps=8), key=jax.random.key(3))
    np.testing.assert_array_equal(result.images, again.images)  # deterministic


def test_batching_does_not_change_fgsm(linear, images):
    whole = attack(linear, images, fgsm(0.02), key=jax.random.key(0))
    parts = attack(linear, images, fgsm(0.02), key=jax.random.key(0), batch_size=3)
    np.testing.assert_allclose(whole.images, parts.images, atol=1e-7)


def test_save_writes_strict_json_and_examples(linear, images, tmp_path):
    import json

    result = attack(linear, images, pgd(0.05, steps=3), key=jax.random.key(0))
    result.save(tmp_path, class_names=linear.class_names)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["attack"] == "pgd" and len(record["per_image"]) == len(images)
    assert record["per_image"][0]["attacked"] in linear.class_names
    assert (tmp_path / "examples.png").is_file()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: fgsm(0.0), "epsilon must be in"),
        (lambda: pgd(-0.1), "epsilon must be in"),
        (lambda: fgsm(1.5), "epsilon must be in"),
        (lambda: pgd(0.1, steps=0), "at least one step"),
        (lambda: pgd(0.1, step_size=0.0), "step_size must be"),
    ],
)
def test_bad_settings_are_one_clear_error(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_a_model_without_classifier_is_refused(linear, images):
    plain = linear.replace(class_names=None, logits_layer=None)
    with pytest.raises(InputError, match="no classifier"):
        attack(plain, images, fgsm(0.1), key=jax.random.key(0))


def test_attack_command(tmp_path, capsys):
    import json

    from cnnvis_jax.cli import main

    out = tmp_path / "a"
    assert main(["attack", "--model", "conceptnet", "--count", "3", "--steps", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    record = json.loads((out / "results.json").read_text())
    assert record["attack"] == "pgd" and record["images"] == 3 and record["steps"] == 2
    assert record["epsilon"] == pytest.approx(8 / 255)
    assert (out / "examples.png").is_file()
    for bad, message in ((["--epsilon", "0"], "--epsilon"), (["--count", "0"], "--count"),
                         (["--model", "vgg16-hed"], "")):  # fmt: skip
        code = main(["attack", *bad, "--out", str(tmp_path / "b")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_targeted_fgsm_is_the_closed_form_and_pgd_reaches_the_target(linear, images):
    eps, target = 0.05, 2
    result = attack(linear, images, fgsm(eps), key=jax.random.key(0), target=target)
    w = np.asarray(linear.params["w"])
    logits = images.reshape(len(images), -1) @ w
    others = np.where(np.eye(4, dtype=bool)[[target] * len(images)], -np.inf, logits).argmax(1)
    grad = (w[:, others] - w[:, [target] * len(images)]).T.reshape(images.shape)
    np.testing.assert_allclose(result.images, images - eps * np.sign(grad), atol=1e-6)
    strong = attack(linear, images, pgd(0.3, steps=20), key=jax.random.key(0), target="a")
    assert strong.target == 0 and np.all(strong.predicted == 0) and np.all(strong.margin < 0)
    # success counts the images moved into the target, not those already there
    assert np.any(strong.attacked != 0)
    assert strong.success_rate == pytest.approx(np.mean(strong.attacked != 0))
    assert strong.summary()["target"] == 0
    already = attack(linear, images, fgsm(0.01), key=jax.random.key(0),
                     target=int(strong.attacked[0]))  # fmt: skip
    assert not already.success[0]


@pytest.mark.parametrize("target, match", [(4, "class 4 is out of range"),
                                           (-1, "class -1 is out of range"),
                                           ("zebra", "unknown target class 'zebra'")])  # fmt: skip
def test_a_bad_target_class_is_one_clear_error(linear, images, target, match):
    with pytest.raises(InputError, match=match):
        attack(linear, images, fgsm(0.1), key=jax.random.key(0), target=target)
