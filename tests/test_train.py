"""Training ConceptNet: outputs, snapshots, exact resumption, loading the result."""

import json

import jax
import numpy as np
import pytest

from cnnvis_jax.errors import InputError
from cnnvis_jax.train import TrainConfig, load_trained, train

TINY = TrainConfig(
    epochs=2,
    train_size=96,
    val_size=64,
    batch_size=32,
    snapshot_epochs=(1,),
    learning_rate=3e-3,
)


def weights_of(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    metrics = train(TINY, run, progress=False)
    return run, metrics


def test_run_writes_metrics_snapshots_and_report(finished_run):
    run, metrics = finished_run
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["epochs"] == 2 and saved["steps"] == 2 * 3
    assert 0.0 <= saved["val_accuracy"] <= 1.0 and saved["seconds"] > 0
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    assert (run / "snapshots" / "epoch_001.safetensors").exists()
    assert (run / "snapshots" / "epoch_002.safetensors").exists()  # the last is always kept
    for name in ("index.html", "curves.png", "samples.png", "filters.png"):
        assert (run / "report" / name).stat().st_size > 0
    first, last = (weights_of(run / "snapshots" / f"epoch_00{e}.safetensors") for e in (1, 2))
    assert not np.array_equal(first["conv1.weight"], last["conv1.weight"])


def test_trained_weights_load_as_a_model(finished_run):
    run, metrics = finished_run
    model = load_trained(run / "weights.safetensors")
    assert model.name == "conceptnet"
    assert model.class_names == tuple(metrics["class_names"])
    from cnnvis_jax.data.concepts import ConceptSet

    val = ConceptSet(TINY.val_size, split="val", seed=TINY.data_seed)
    batch = val.batch(np.arange(len(val)))
    logits = model(batch["image"].astype(np.float32) / 255.0, "fc8")["fc8"]
    accuracy = float(np.mean(np.argmax(logits, -1) == batch["target"]))
    assert accuracy == pytest.approx(metrics["val_accuracy"], abs=1e-9)


def test_interrupted_run_resumes_to_the_same_result(finished_run, tmp_path):
    _, reference = finished_run
    partial = train(TINY, tmp_path, progress=False, report=False, stop_after_steps=4)
    assert partial == {"interrupted": True, "step": 4}
    resumed = train(TINY, tmp_path, progress=False, report=False)
    strip = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert strip(resumed["history"]) == strip(reference["history"])
    a = weights_of(tmp_path / "weights.safetensors")
    b = weights_of(finished_run[0] / "weights.safetensors")
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_rerun_with_other_settings_is_refused(finished_run):
    run, _ = finished_run
    other = TrainConfig(**{**TINY.to_json(), "seed": 5, "snapshot_epochs": (1,)})
    with pytest.raises(InputError, match="another configuration"):
        train(other, run, progress=False)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"batch_size": 500}, "exceeds train_size"),
        ({"target": "color"}, "target must be"),
    ],
)
def test_bad_configs(changes, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**{**TINY.to_json(), "snapshot_epochs": (1,), **changes})


def test_variants_build_and_train_one_step(tmp_path):
    config = TrainConfig(
        epochs=1,
        train_size=32,
        val_size=32,
        batch_size=32,
        batchnorm=True,
        dropout=False,
        conv1_kernel=3,
        conv1_stride=1,
    )
    metrics = train(config, tmp_path, progress=False, report=False)
    model = load_trained(tmp_path / "weights.safetensors")
    assert model.layer("conv1").shape == (64, 64, 48)
    assert metrics["steps"] == 1


def test_sliced_max_pool_equals_reduce_window_pool_and_its_gradient():
    from cnnvis_jax.zoo.conceptnet import max_pool, max_pool_sliced

    # distinct values: no ties, so both gradients route to the same argmax
    x = jax.random.permutation(jax.random.key(0), 2 * 9 * 9 * 3).reshape(2, 9, 9, 3)
    x = x.astype(np.float32) - 80.0
    np.testing.assert_array_equal(max_pool_sliced(x), max_pool(x))
    g = jax.random.normal(jax.random.key(1), max_pool(x).shape)
    grad_ref = jax.grad(lambda v: (max_pool(v) * g).sum())(x)
    grad_sliced = jax.grad(lambda v: (max_pool_sliced(v) * g).sum())(x)
    np.testing.assert_allclose(grad_sliced, grad_ref, rtol=0, atol=1e-6)


def test_calibration_gives_unit_scale_preactivations():
    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.train.loop import Trainer
    from cnnvis_jax.zoo import conceptnet

    config = TrainConfig(epochs=1, train_size=64, val_size=32, batch_size=32)
    trainer = Trainer(config, num_classes=12)
    images = ConceptSet(64, split="train").batch(np.arange(64))["image"]
    trainer.calibrate(images)
    module = trainer.module()
    x = conceptnet.INPUT.normalize(images.astype(np.float32) / 255.0)
    taps = module(x, ("conv1_pre", "conv3_pre", "conv5_pre"))
    for name, pre in taps.items():
        mean, std = np.mean(pre, (0, 1, 2)), np.std(pre, (0, 1, 2))
        np.testing.assert_allclose(mean, 0.0, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(std[std > 0.5], 1.0, rtol=1e-3, err_msg=name)
    assert float(np.abs(module.fc8.kernel[...]).max()) == 0.0  # uniform first predictions


def test_dropout_ramps_up_over_the_warmup():
    from cnnvis_jax.train.loop import Trainer

    config = TrainConfig(epochs=2, train_size=64, val_size=32, batch_size=16, dropout_warmup=0.5)
    trainer = Trainer(config, num_classes=12)
    scales = []
    for step in (0, 2, 4, 6):
        trainer.step = step
        scales.append(float(trainer.dropout_scale()))
    assert scales == [0.0, 0.5, 1.0, 1.0]  # 8 steps, ramp over the first 4


def test_first_layer_kernels_get_the_extra_decay():
    import optax

    from cnnvis_jax.train.loop import Trainer, _optimizer

    config = TrainConfig(
        epochs=1, train_size=64, val_size=32, batch_size=16, weight_decay=0.5,
        conv1_weight_decay=4.0,
    )  # fmt: skip
    params = Trainer(config, num_classes=12).params
    tx = _optimizer(config)
    state = tx.init(params)
    for _ in range(3):  # past the first warm-up step, whose learning rate is 0
        zeros = jax.tree_util.tree_map(np.zeros_like, params)
        updates, state = tx.update(zeros, state, params)
    lr = float(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 1, 4)(2))
    for layer, decay in (("conv1", 4.5), ("conv2", 0.5), ("fc6", 0.5)):
        kernel = np.asarray(params[layer]["kernel"][...])
        step = np.asarray(updates[layer]["kernel"][...])
        np.testing.assert_allclose(step, -lr * decay * kernel, rtol=1e-5, err_msg=layer)
