"""Zoo networks: tap names and shapes at the contract size, early stop, aliases.

Shapes come from abstract evaluation (``nnx.eval_shape`` + ``jax.eval_shape``), so
nothing is allocated or compiled; numerical agreement with torchvision lives in
test_parity_torch.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnnvis_jax import zoo
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import CAFFE, TORCHVISION
from cnnvis_jax.weights import load_torch_state_dict, state_dict_shapes
from cnnvis_jax.zoo import layers, registry

TORCHVISION_NETS = ("alexnet", "vgg16", "resnet18", "resnet50", "googlenet")
ZOO = (*TORCHVISION_NETS, "caffenet")

# Canonical taps at the contract size (NHWC without batch), from the torchvision /
# Caffe definitions.
EXPECTED = {
    "alexnet": {
        "conv1": (55, 55, 64), "pool1": (27, 27, 64), "conv2": (27, 27, 192),
        "pool2": (13, 13, 192), "conv3": (13, 13, 384), "conv4_pre": (13, 13, 256),
        "conv5": (13, 13, 256), "pool5": (6, 6, 256), "fc6": (4096,), "fc7": (4096,),
        "fc8": (1000,),
    },
    "caffenet": {
        "conv1_pre": (55, 55, 96), "conv1": (55, 55, 96), "pool1": (27, 27, 96),
        "norm1": (27, 27, 96), "conv2": (27, 27, 256), "pool2": (13, 13, 256),
        "norm2": (13, 13, 256), "conv3": (13, 13, 384), "conv4": (13, 13, 384),
        "conv5": (13, 13, 256), "pool5": (6, 6, 256), "fc6": (4096,), "fc7": (4096,),
        "fc8": (1000,),
    },
    "vgg16": {
        "conv1_1": (224, 224, 64), "conv1_2_pre": (224, 224, 64), "pool1": (112, 112, 64),
        "conv2_2": (112, 112, 128), "pool2": (56, 56, 128), "conv3_3": (56, 56, 256),
        "pool3": (28, 28, 256), "conv4_3": (28, 28, 512), "pool4": (14, 14, 512),
        "conv5_3": (14, 14, 512), "pool5": (7, 7, 512), "fc6": (4096,), "fc7": (4096,),
        "fc8": (1000,),
    },
    "resnet18": {
        "conv1_pre": (112, 112, 64), "conv1": (112, 112, 64), "pool1": (56, 56, 64),
        "layer1.0": (56, 56, 64), "layer1": (56, 56, 64), "layer2.0": (28, 28, 128),
        "layer2": (28, 28, 128), "layer3": (14, 14, 256), "layer4": (7, 7, 512),
        "avgpool": (512,), "fc": (1000,),
    },
    "resnet50": {
        "conv1": (112, 112, 64), "pool1": (56, 56, 64), "layer1.0": (56, 56, 256),
        "layer1": (56, 56, 256), "layer2.2": (28, 28, 512), "layer2": (28, 28, 512),
        "layer3.4": (14, 14, 1024), "layer3": (14, 14, 1024), "layer4": (7, 7, 2048),
        "avgpool": (2048,), "fc": (1000,),
    },
    "googlenet": {
        "conv1": (112, 112, 64), "pool1": (56, 56, 64), "conv2": (56, 56, 64),
        "conv3": (56, 56, 192), "pool2": (28, 28, 192), "inception3a": (28, 28, 256),
        "inception3b": (28, 28, 480), "pool3": (14, 14, 480), "inception4a": (14, 14, 512),
        "inception4d": (14, 14, 528), "inception4e": (14, 14, 832), "pool4": (7, 7, 832),
        "inception5a": (7, 7, 832), "inception5b": (7, 7, 1024), "avgpool": (1024,),
        "fc": (1000,),
    },
}  # fmt: skip


@functools.cache
def abstract(name: str, **variant):
    """(graphdef, abstract state) of zoo network ``name`` in evaluation mode."""
    module = nnx.eval_shape(lambda: zoo.init_module(name, **variant))
    module.eval()
    return nnx.split(module)


def tap_shapes(name: str, layers=None, size=None, **variant) -> dict[str, tuple]:
    graphdef, state = abstract(name, **variant)
    h, w = size or zoo.entry(name).input.size
    x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, layers), state, x)
    for value in out.values():
        assert value.shape[0] == 2
    return {k: tuple(v.shape[1:]) for k, v in out.items()}


def count_convs(name: str, layers) -> int:
    graphdef, state = abstract(name)
    h, w = zoo.entry(name).input.size
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x, layers))(state, x)
    return str(jaxpr).count("conv_general_dilated")


def test_registered_names():
    assert set(ZOO) | {"conceptnet"} <= set(zoo.names())
    for name in TORCHVISION_NETS:
        assert zoo.entry(name).input == TORCHVISION
        assert zoo.entry(name).num_classes == 1000
    assert zoo.entry("caffenet").input == CAFFE
    assert zoo.entry("caffenet").input.size == (227, 227)


@pytest.mark.parametrize("name", ZOO)
def test_taps_at_contract_size(name):
    entry = zoo.entry(name)
    shapes = tap_shapes(name)
    assert set(shapes) == set(entry.layers)
    for tap, shape in EXPECTED[name].items():
        assert shapes[tap] == shape, tap
    assert shapes[entry.logits] == (entry.num_classes,)
    # every alias names a distinct torch module and every aliased tap exists
    flat = [a for names in entry.aliases.values() for a in names]
    assert len(flat) == len(set(flat))
    assert set(entry.aliases) <= set(entry.layers)
    assert not set(flat) & set(entry.layers)


@pytest.mark.parametrize(
    "name, request_, fewer_than",
    [
        ("alexnet", ("conv2",), 3),
        ("caffenet", ("norm1",), 2),
        ("vgg16", ("pool2",), 5),
        ("resnet18", ("layer1.0",), 4),
        ("resnet50", ("pool1",), 2),
        ("googlenet", ("conv3", "pool1"), 4),
    ],
)
def test_early_stop_returns_only_requested_taps(name, request_, fewer_than):
    shapes = tap_shapes(name, request_)
    assert set(shapes) == set(request_)
    assert count_convs(name, request_) < fewer_than


@pytest.mark.parametrize("name", ZOO)
def test_input_gradient_traces_through_every_layer(name):
    # abstract: catches any non-differentiable op (e.g. a generic reduce_window)
    graphdef, state = abstract(name)
    logits = zoo.entry(name).logits
    h, w = zoo.entry(name).input.size
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)

    def score(s, x):
        return nnx.merge(graphdef, s)(x, (logits,))[logits][:, 0].sum()

    assert jax.eval_shape(jax.grad(score, argnums=1), state, x).shape == (1, h, w, 3)


def test_max_pool_gradient_picks_one_input_per_window():
    x = jax.random.normal(jax.random.key(0), (1, 7, 7, 2))
    g = jax.jit(jax.grad(lambda x: layers.max_pool2d(x, 3, 2, 0, ceil_mode=True).sum()))(x)
    assert float(g.sum()) == 2 * 3 * 3  # one unit of gradient per output
    assert set(np.unique(np.asarray(g))) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def test_empty_request_does_no_work():
    assert tap_shapes("alexnet", ()) == {}
    assert count_convs("alexnet", ()) == 0


def test_other_input_sizes_follow_torch():
    # adaptive pools bring any size to the classifier's fixed input
    assert tap_shapes("alexnet", ("pool5", "fc8"), size=(64, 64)) == {
        "pool5": (1, 1, 256),
        "fc8": (1000,),
    }
    assert tap_shapes("vgg16", ("pool5", "fc6"), size=(64, 64)) == {
        "pool5": (2, 2, 512),
        "fc6": (4096,),
    }
    # ceil-mode pools: 64 px -> 32 -> 16 -> 8 -> 4 -> 2
    got = tap_shapes("googlenet", ("pool1", "pool2", "pool3", "pool4", "fc"), size=(64, 64))
    assert got == {
        "pool1": (16, 16, 64),
        "pool2": (8, 8, 192),
        "pool3": (4, 4, 480),
        "pool4": (2, 2, 832),
        "fc": (1000,),
    }


def test_num_classes_and_variants():
    assert tap_shapes("resnet18", ("fc",), size=(32, 32), num_classes=7) == {"fc": (7,)}
    graphdef, state = abstract("googlenet", transform_input=True)
    assert nnx.merge(graphdef, state).transform_input is True
    with pytest.raises(InputError, match="resnet50 has no variants"):
        zoo.init_module("resnet50", dropout=0.1)


@pytest.mark.parametrize("name", ZOO)
def test_unknown_layer_lists_valid_names(name):
    with pytest.raises(InputError, match="valid names") as info:
        tap_shapes(name, ("conv9_9",))
    assert zoo.entry(name).layers[0] in str(info.value)


def test_aliases_follow_torchvision_module_names():
    a = zoo.entry("alexnet").aliases
    assert a["conv1"] == ("features.1",) and a["conv1_pre"] == ("features.0",)
    assert a["pool1"] == ("features.2",) and a["pool5"] == ("features.12",)
    assert a["fc6"] == ("classifier.2",) and a["fc8"] == ("classifier.6",)
    v = zoo.entry("vgg16").aliases
    assert v["conv5_3"] == ("features.29",) and v["pool5"] == ("features.30",)
    assert v["fc6"] == ("classifier.1",) and v["fc7"] == ("classifier.4",)
    r = zoo.entry("resnet50").aliases
    assert r["pool1"] == ("maxpool",) and r["conv1"] == ("relu",)
    assert r["layer3"] == ("layer3.5",) and r["layer4"] == ("layer4.2",)
    assert zoo.entry("resnet18").aliases["layer2"] == ("layer2.1",)
    g = zoo.entry("googlenet").aliases
    assert g["pool1"] == ("maxpool1",) and g["pool4"] == ("maxpool4",)


def test_parameter_paths_are_torchvision_keys():
    keys = set(state_dict_shapes(abstract_module("alexnet")))
    assert {
        "features.0.weight",
        "features.10.bias",
        "classifier.1.weight",
        "classifier.6.bias",
    } <= keys
    keys = set(state_dict_shapes(abstract_module("resnet50")))
    assert {
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_var",
        "layer4.2.conv3.weight",
        "fc.weight",
    } <= keys
    assert "layer1.1.downsample.0.weight" not in keys
    keys = set(state_dict_shapes(abstract_module("googlenet")))
    assert {"conv1.conv.weight", "conv1.bn.weight", "inception3a.branch4.1.conv.weight"} <= keys
    assert not any(k.endswith("conv.bias") for k in keys)
    keys = set(state_dict_shapes(abstract_module("caffenet")))
    assert keys == {
        f"{n}.{p}"
        for n in (*(f"conv{i}" for i in range(1, 6)), "fc6", "fc7", "fc8")
        for p in ("weight", "bias")
    }


def abstract_module(name):
    return nnx.merge(*abstract(name))


def test_as_model_catalog_and_aliases():
    # a concrete AlexNet without random initialization: weights from a state dict
    rng = np.random.default_rng(0)
    state = {
        k: (rng.standard_normal(shape) * 0.01).astype(np.float32)
        for k, shape in state_dict_shapes(abstract_module("alexnet")).items()
    }
    module = load_torch_state_dict("alexnet", state)
    model = registry.as_model(module, "alexnet")
    assert model.layer_names == zoo.entry("alexnet").layers
    for tap, shape in EXPECTED["alexnet"].items():
        assert model.layer(tap).shape == shape
    assert model.logits_layer == "fc8" and len(model.class_names) == 1000
    assert model.resolve("features.1") == "conv1"
    assert model.resolve("classifier.6") == "fc8"
    rf = model.layer("conv1").receptive_field
    assert (rf.size, rf.stride) == ((11, 11), (4, 4))
    images = jnp.asarray(rng.uniform(size=(1, 224, 224, 3)), jnp.float32)
    out = model.apply(model.params, images, ["features.2", "conv1"])
    assert out["features.2"].shape == (1, 27, 27, 64)
    np.testing.assert_array_equal(out["features.2"], layers.max_pool2d(out["conv1"], 3, 2))
    with pytest.raises(InputError, match="valid names"):
        model.resolve("features.99")


def test_pool_output_size_matches_torch_formula():
    # torch: MaxPool2d(3, 2, ceil_mode=True) on 112 -> 56; floor -> 55
    assert layers.pool_output_size(112, 3, 2, 0, True) == 56
    assert layers.pool_output_size(112, 3, 2, 0, False) == 55
    # the last window may not start in the right padding: 5 px, k2 s2 p1, ceil
    assert layers.pool_output_size(5, 2, 2, 1, True) == 3
    with pytest.raises(InputError, match="larger than the padded input"):
        layers.pool_output_size(2, 3, 2, 0, True)


def test_max_pool_ceil_mode_never_picks_padding():
    x = -jnp.arange(1.0, 37.0).reshape(1, 6, 6, 1)  # all negative
    y = layers.max_pool2d(x, 3, 2, 0, ceil_mode=True)
    assert y.shape == (1, 3, 3, 1)  # floor mode: 2x2
    assert float(y[0, 2, 2, 0]) == -29.0  # the window over rows/cols 4..6 hangs over by one


def test_adaptive_avg_pool_uses_torch_windows():
    x = jnp.arange(7.0).reshape(1, 7, 1, 1) * jnp.ones((1, 7, 3, 1))
    y = layers.adaptive_avg_pool2d(x, (3, 3))
    # windows floor(i*7/3)..ceil((i+1)*7/3): [0,3) [2,5) [4,7)
    np.testing.assert_allclose(y[0, :, 0, 0], [1.0, 3.0, 5.0])
    assert layers.adaptive_avg_pool2d(jnp.ones((1, 1, 1, 2)), 6).shape == (1, 6, 6, 2)
    z = jnp.ones((1, 6, 6, 1))
    assert layers.adaptive_avg_pool2d(z, 6) is z
