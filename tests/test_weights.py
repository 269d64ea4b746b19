"""Weight import/export: layouts, exact round trips, strict errors, unsafe/corrupt files."""

import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnnvis_jax import weights, zoo
from cnnvis_jax.errors import WeightsError


class Tiny(nnx.Module):
    """Conv(3->4, 3x3/2) + BatchNorm + ReLU on 6x6 -> 3x3x4, flatten, Linear(36->5)."""

    torch_flatten_chw = {"fc": (4, 3, 3)}

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(36, 5, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.bn(self.conv(x)))
        return h, self.fc(h.reshape(h.shape[0], -1))


def random_state(module_or_shapes, seed=0) -> dict[str, np.ndarray]:
    shapes = (
        module_or_shapes
        if isinstance(module_or_shapes, dict)
        else weights.state_dict_shapes(module_or_shapes)
    )
    rng = np.random.default_rng(seed)
    state = {k: rng.standard_normal(s).astype(np.float32) * 0.1 for k, s in shapes.items()}
    for key in state:
        if key.endswith("running_var"):
            state[key] = np.abs(state[key]) + 0.5
    return state


def shapes_of(name, **variant):
    return weights.state_dict_shapes(nnx.eval_shape(lambda: zoo.init_module(name, **variant)))


def abstract_tiny() -> Tiny:
    """A Tiny with shapes only: loading a full state dict makes it concrete."""
    return nnx.eval_shape(lambda: Tiny(nnx.Rngs(0)))


@pytest.fixture(scope="module")
def tiny_state():
    return random_state(abstract_tiny(), seed=1)


def assert_same(a: dict, b: dict):
    assert list(a) == list(b) or set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --- layouts ------------------------------------------------------------------------


def test_layouts_match_torch_conventions(tiny_state):
    module = weights.load_torch_state_dict(abstract_tiny(), tiny_state)
    assert set(tiny_state) == {
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
        "bn.running_var", "fc.weight", "fc.bias",
    }  # fmt: skip
    np.testing.assert_array_equal(
        module.conv.kernel[...], tiny_state["conv.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(module.bn.scale[...], tiny_state["bn.weight"])
    np.testing.assert_array_equal(module.bn.mean[...], tiny_state["bn.running_mean"])
    np.testing.assert_array_equal(module.bn.var[...], tiny_state["bn.running_var"])
    # the flatten permutation: torch computes W @ flatten(h in C,H,W order) + b
    module.eval()
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 6, 6, 3)), jnp.float32)
    h, logits = module(x)
    h_chw = np.asarray(h).transpose(0, 3, 1, 2).reshape(2, -1)
    expected = h_chw @ tiny_state["fc.weight"].T + tiny_state["fc.bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_export_is_exact_inverse_of_import(tiny_state):
    module = weights.load_torch_state_dict(abstract_tiny(), tiny_state)
    assert_same(weights.export_state_dict(module), tiny_state)


def test_conceptnet_is_native_no_flatten_permutation():
    shapes = shapes_of("conceptnet", batchnorm=True)
    assert shapes["conv1.weight"] == (48, 3, 5, 5)
    assert "bn1.running_mean" in shapes and "conv1.bias" not in shapes
    state = random_state(shapes, seed=6)
    module = weights.load_torch_state_dict("conceptnet", state, batchnorm=True)
    np.testing.assert_array_equal(module.fc6.kernel[...], state["fc6.weight"].T)
    assert_same(weights.export_state_dict(module, "conceptnet"), state)


# --- files --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_state():
    return random_state(shapes_of("resnet18"), seed=4)


def test_safetensors_round_trip_is_exact(tmp_path, resnet_state):
    module = weights.load_torch_state_dict("resnet18", resnet_state)
    path = weights.save_safetensors(module, "resnet18", tmp_path / "r18.safetensors")
    read = weights.read_state_dict(path)
    assert_same(read, resnet_state)
    again = weights.load_torch_state_dict("resnet18", read)
    assert_same(weights.export_state_dict(again), resnet_state)


def test_npz_round_trip_is_exact(tmp_path, tiny_state):
    np.savez(tmp_path / "tiny.npz", **tiny_state)
    read = weights.read_state_dict(tmp_path / "tiny.npz")
    assert_same(read, tiny_state)
    module = weights.load_torch_state_dict(abstract_tiny(), read)
    assert_same(weights.export_state_dict(module), tiny_state)


def truncate(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def test_truncated_or_corrupt_safetensors_is_refused(tmp_path, tiny_state):
    from safetensors.numpy import save_file

    path = tmp_path / "cut.safetensors"
    save_file(tiny_state, str(path))
    truncate(path)
    with pytest.raises(WeightsError, match=r"cut\.safetensors.*truncated or corrupt"):
        weights.read_state_dict(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="junk.safetensors"):
        weights.read_state_dict(junk)


def test_truncated_npz_is_refused(tmp_path, tiny_state):
    path = tmp_path / "cut.npz"
    np.savez(path, **tiny_state)
    truncate(path, 0.6)
    with pytest.raises(WeightsError, match=r"cut\.npz.*truncated or corrupt"):
        weights.read_state_dict(path)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsError, match="pickled objects"):
        weights.read_state_dict(path)


def test_missing_unknown_and_directory_paths(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        weights.read_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsError, match="is a directory"):
        weights.read_state_dict(tmp_path)
    odd = tmp_path / "w.h5"
    odd.write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown format '.h5'"):
        weights.read_state_dict(odd)


class _Payload:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def write_malicious_pth(tmp_path):
    sentinel = tmp_path / "unpickled.txt"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": _Payload(sentinel)}, protocol=2))
    return path, sentinel


def test_pth_without_torch_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    path, sentinel = write_malicious_pth(tmp_path)
    with pytest.raises(WeightsError, match="without torch") as info:
        weights.read_state_dict(path)
    assert "convert_to_safetensors" in str(info.value)
    assert not sentinel.exists()


def test_pth_with_torch_uses_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    path, sentinel = write_malicious_pth(tmp_path)
    with pytest.raises(WeightsError, match="weights_only"):
        weights.read_state_dict(path)
    assert not sentinel.exists()
    good = tmp_path / "good.pt"
    state = {"a.weight": torch.ones(2, 3, dtype=torch.bfloat16), "a.bias": torch.zeros(2)}
    torch.save({"state_dict": state, "epoch": 3}, good)
    read = weights.read_state_dict(good)
    assert read["a.weight"].dtype == np.float32 and read["a.weight"].shape == (2, 3)
    converted = weights.convert_to_safetensors(good, tmp_path / "good.safetensors")
    assert_same(weights.read_state_dict(converted), read)


# --- strictness ---------------------------------------------------------------------


def test_strict_lists_every_problem(tiny_state):
    state = dict(tiny_state)
    del state["conv.weight"], state["bn.running_var"]
    state["extra.weight"] = np.zeros(3, np.float32)
    state["head.bias"] = np.zeros(2, np.float32)
    state["fc.weight"] = np.zeros((5, 35), np.float32)
    state["bn.weight"] = np.ones(4, np.int64)
    with pytest.raises(WeightsError) as info:
        weights.load_torch_state_dict(abstract_tiny(), state, name="tiny")
    message = str(info.value)
    for expected in (
        "'tiny'",
        "missing keys (2)",
        "conv.weight (4, 3, 3, 3)",
        "bn.running_var (4,)",
        "unexpected keys (2)",
        "extra.weight (3,)",
        "head.bias (2,)",
        "fc.weight expected (5, 36) got (5, 35)",
        "bn.weight int64",
        "strict=False",
    ):
        assert expected in message


def test_non_strict_skips_missing_and_unexpected_but_not_shapes(tiny_state):
    module = weights.load_torch_state_dict(abstract_tiny(), random_state(abstract_tiny(), seed=9))
    before = np.asarray(module.conv.kernel[...]).copy()
    partial = {k: v for k, v in tiny_state.items() if k != "conv.weight"}
    partial["unused.weight"] = np.zeros(1, np.float32)
    weights.load_torch_state_dict(module, partial, strict=False)
    np.testing.assert_array_equal(module.conv.kernel[...], before)
    np.testing.assert_array_equal(module.fc.bias[...], tiny_state["fc.bias"])
    partial["fc.bias"] = np.zeros(6, np.float32)
    with pytest.raises(WeightsError, match=r"fc.bias expected \(5,\) got \(6,\)"):
        weights.load_torch_state_dict(module, partial, strict=False)


def test_torch_extras_are_dropped(tiny_state):
    state = {f"module.{k}": v for k, v in tiny_state.items()}  # saved from DataParallel
    state["module.bn.num_batches_tracked"] = np.array(7, np.int64)
    module = weights.load_torch_state_dict(abstract_tiny(), state)
    assert_same(weights.export_state_dict(module), tiny_state)


def test_variant_arguments_need_a_zoo_name(tiny_state):
    with pytest.raises(WeightsError, match="only when a zoo name"):
        weights.load_torch_state_dict(abstract_tiny(), tiny_state, num_classes=3)


def test_abstract_modules_cannot_be_exported():
    abstract = abstract_tiny()
    with pytest.raises(WeightsError, match="abstract parameters"):
        weights.export_state_dict(abstract, "tiny")
    assert weights.state_dict_shapes(abstract)["fc.weight"] == (5, 36)


# --- zoo names ----------------------------------------------------------------------


def test_infer_num_classes_from_logits_weight():
    assert weights.infer_num_classes("alexnet", {"classifier.6.weight": np.zeros((10, 4096))}) == 10
    assert weights.infer_num_classes("resnet18", {"fc.bias": np.zeros(37)}) == 37
    assert weights.infer_num_classes("resnet18", {}) is None


def test_googlenet_import_drops_aux_heads_and_takes_variant():
    state = random_state(shapes_of("googlenet", num_classes=3), seed=5)
    state["aux1.conv.conv.weight"] = np.zeros((128, 512, 1, 1), np.float32)
    state["aux2.fc2.bias"] = np.zeros(3, np.float32)
    # transform_input defaults to True (torchvision's pretrained weights, see
    # test_parity_torch); weights trained without it override the default
    module = weights.load_torch_state_dict("googlenet", state, transform_input=False)
    assert module.transform_input is False
    assert module.fc.kernel.shape == (1024, 3)  # inferred from fc.weight
    assert module.fc.kernel[...].dtype == np.float32


def test_load_model_from_file_infers_classes(tmp_path):
    state = random_state(shapes_of("conceptnet", num_classes=7), seed=8)
    module = weights.load_torch_state_dict("conceptnet", state)
    weights.save_safetensors(module, "conceptnet", tmp_path / "c7.safetensors")
    model = weights.load_model("conceptnet", tmp_path / "c7.safetensors")
    assert len(model.class_names) == 7 and model.layer("fc8").shape == (7,)
    images = jnp.full((1, 64, 64, 3), 0.5, jnp.float32)
    expected = module(model.input.normalize(images), ("fc8",))["fc8"]
    np.testing.assert_array_equal(model(images, ["fc8"])["fc8"], expected)
    with pytest.raises(WeightsError, match=r"fc8.weight expected \(3, 256\) got \(7, 256\)"):
        weights.load_model("conceptnet", tmp_path / "c7.safetensors", num_classes=3)


def test_load_model_without_weights_warns():
    with pytest.warns(UserWarning, match="random weights"):
        model = weights.load_model("conceptnet", seed=1, num_classes=4)
    assert len(model.class_names) == 4


def test_logits_keys_of_every_zoo_network():
    from cnnvis_jax.zoo import registry

    expected = {"alexnet": "classifier.6", "vgg16": "classifier.6", "caffenet": "fc8"}
    expected["conceptnet"] = "fc8"
    for name in registry.names():
        variant = tuple(sorted(weights._pretrained_variant(name).items()))
        layer = expected.get(name, "fc")
        assert weights._logits_keys(name, variant) == (f"{layer}.bias", f"{layer}.weight"), name
