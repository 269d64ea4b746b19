"""Parity with the reference PyTorch definitions, with identical random weights.

For each network a torch model is built with random weights (no download; BatchNorm
weights and running statistics randomized so that their mapping matters), its
state dict is loaded into the zoo network, and on the same input we compare the
logits and *every* tap with the output of its torchvision module (forward hooks on
the modules named by the aliases, or by the tap name itself). NCHW activations are
transposed to NHWC; a global pool's (N, C, 1, 1) is flattened. The error measure is
``max|ours - torch| / max(1, max|torch|)`` in float32 and must stay below 1e-4.
CaffeNet has no torchvision counterpart; a minimal torch CaffeNet (LRN via
torch.nn.LocalResponseNorm, groups=2, ceil-mode pools) is defined here instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from cnnvis_jax import weights, zoo  # noqa: E402
from cnnvis_jax.zoo import layers  # noqa: E402

pytestmark = pytest.mark.torch
TOLERANCE = 1e-4


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(ours - reference).max() / max(1.0, np.abs(reference).max()))


def to_nhwc(value: np.ndarray, like_shape) -> np.ndarray:
    if value.ndim == 4 and len(like_shape) == 2:  # global pool (N, C, 1, 1)
        value = value.reshape(value.shape[0], -1)
    if value.ndim == 4:
        value = value.transpose(0, 2, 3, 1)
    return value


def randomize(net, seed: int, *, kaiming: bool = False) -> None:
    """Random BatchNorm affine and statistics; optionally He-normal conv/linear weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif kaiming and isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)


def state_of(net) -> dict[str, np.ndarray]:
    """The state dict as numpy arrays sharing torch's memory (the net is not changed later)."""
    return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def forward_all(module, x_nchw: np.ndarray) -> dict[str, np.ndarray]:
    """Every tap of ``module`` for NCHW input, in full float32 precision (no TF32)."""
    graphdef, state = nnx.split(module)
    run = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    with jax.default_matmul_precision("highest"):
        out = run(state, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
    return {k: np.asarray(v) for k, v in out.items()}


def torch_taps(net, name: str, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Outputs of the torch modules that correspond to the taps, and the logits."""
    entry = zoo.entry(name)
    modules = dict(net.named_modules())
    taps, handles = {}, []
    for tap in entry.layers:
        candidates = (*entry.aliases.get(tap, ()), tap)  # aliases first: resnet's conv1
        target = next((c for c in candidates if c in modules), None)
        assert target is not None, f"{name}: tap {tap} has no torch module"

        def hook(_module, _inputs, output, tap=tap):
            taps[tap] = output.detach().numpy().copy()

        handles.append(modules[target].register_forward_hook(hook))
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    for handle in handles:
        handle.remove()
    return taps, logits


def check_export(module, name: str, state: dict[str, np.ndarray]) -> None:
    """The export is the exact inverse of the import: it gives back the torch state."""
    exported = weights.export_state_dict(module, name)
    expected = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert set(exported) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def check_parity(
    name: str,
    net,
    size: int,
    *,
    num_classes: int = 1000,
    batch: int = 2,
    seed: int = 0,
    export: bool = True,
    **variant,
):
    """Load ``net``'s weights into zoo network ``name`` and compare every tap."""
    net.eval()
    state = state_of(net)
    module = weights.load_torch_state_dict(name, state, num_classes=num_classes, **variant)
    if export:
        check_export(module, name, state)

    x = np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
    reference, logits = torch_taps(net, name, x)
    ours = forward_all(module, x)
    assert set(ours) == set(zoo.entry(name).layers)
    errors = {}
    for tap, value in ours.items():
        ref = to_nhwc(reference[tap], value.shape)
        assert value.shape == ref.shape, (tap, value.shape, ref.shape)
        errors[tap] = relative_error(value, ref)
    errors["logits"] = relative_error(ours[zoo.entry(name).logits], logits)
    worst = max(errors, key=errors.get)
    print(f"{name}@{size}: worst {worst} {errors[worst]:.2e}; logits {errors['logits']:.2e}")
    assert errors[worst] < TOLERANCE, errors
    return module


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_alexnet_224():
    check_parity("alexnet", torchvision.models.alexnet(weights=None), 224)


def test_alexnet_small_input_and_input_gradient():
    # 96 px: pool5 is 2x2, the adaptive pool spreads it over 6x6
    net = torchvision.models.alexnet(weights=None, num_classes=10)
    module = check_parity("alexnet", net, 96, num_classes=10)
    # max-pool switches and ReLU masks route the gradient as torch's autograd does
    x = np.random.default_rng(1).standard_normal((1, 3, 96, 96)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    net.features[:12](xt)[:, 7].mean().backward()
    graphdef, state = nnx.split(module)

    def score(s, x):
        return nnx.merge(graphdef, s)(x, ("conv5",))["conv5"][..., 7].mean()

    with jax.default_matmul_precision("highest"):
        grad = jax.jit(jax.grad(score, argnums=1))(state, jnp.asarray(x.transpose(0, 2, 3, 1)))
    reference = xt.grad.numpy().transpose(0, 2, 3, 1)
    scale = np.abs(reference).max()
    assert scale > 0
    error = np.abs(np.asarray(grad) - reference).max() / scale
    print(f"alexnet@96 d conv5[7]/d input: {error:.2e} of the largest gradient")
    assert error < TOLERANCE


def test_vgg16():
    # 64 px: pool5 is 2x2, the adaptive pool spreads it over 7x7 with uneven windows
    # (the export round trip, same code as AlexNet's, is skipped for its 0.5 GB)
    net = torchvision.models.vgg16(weights=None, num_classes=10)
    check_parity("vgg16", net, 64, num_classes=10, export=False)


def test_resnet18():
    net = torchvision.models.resnet18(weights=None)
    randomize(net, 1)
    check_parity("resnet18", net, 64)


def test_resnet50_bottlenecks():
    net = torchvision.models.resnet50(weights=None, num_classes=10)
    randomize(net, 2)
    check_parity("resnet50", net, 32, num_classes=10, batch=1)


def test_googlenet_with_transform_input():
    net = torchvision.models.googlenet(
        weights=None, aux_logits=False, init_weights=False, transform_input=True
    )
    randomize(net, 3, kaiming=True)
    check_parity("googlenet", net, 64, transform_input=True)


def test_googlenet_state_dict_with_aux_heads_loads():
    net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    state = state_of(net)
    assert any(k.startswith("aux1.") for k in state)
    module = weights.load_torch_state_dict("googlenet", state, num_classes=1000)
    assert module.transform_input is True  # torchvision's choice for its weights
    check_export(module, "googlenet", {k: v for k, v in state.items() if not k.startswith("aux")})


def test_torch_loads_our_export():
    net = torchvision.models.resnet18(weights=None, num_classes=5)
    randomize(net, 4)
    module = weights.load_torch_state_dict("resnet18", state_of(net), num_classes=5)
    other = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    exported = weights.export_state_dict(module, "resnet18")
    other.load_state_dict({k: torch.tensor(v) for k, v in exported.items()}, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_array_equal(other(x).numpy(), net.eval()(x).numpy())


# --- CaffeNet against a minimal torch definition -------------------------------------


class TorchCaffeNet(torch.nn.Module):
    """BVLC reference CaffeNet in torch, returning every tap (NCHW)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    def forward(self, x):
        relu = torch.nn.functional.relu
        taps = {}
        for i in range(1, 6):
            x = getattr(self, f"conv{i}")(x)
            taps[f"conv{i}_pre"] = x
            x = taps[f"conv{i}"] = relu(x)
            if i in (1, 2, 5):
                x = taps[f"pool{i}"] = self.pool(x)
            if i in (1, 2):
                x = taps[f"norm{i}"] = self.norm(x)
        x = taps["fc6"] = relu(self.fc6(torch.flatten(x, 1)))
        x = taps["fc7"] = relu(self.fc7(x))
        taps["fc8"] = self.fc8(x)
        return taps


def test_caffenet_against_torch_reference():
    net = TorchCaffeNet(num_classes=20).eval()
    randomize(net, 5, kaiming=True)
    module = weights.load_torch_state_dict("caffenet", state_of(net))  # infers 20 classes
    assert module.fc8.kernel.shape == (4096, 20)
    # Caffe-scale input (0-255 minus mean) so that LRN is far from the identity
    x = (np.random.default_rng(6).standard_normal((2, 3, 227, 227)) * 60).astype(np.float32)
    with torch.no_grad():
        reference = {k: v.numpy() for k, v in net(torch.from_numpy(x)).items()}
    ours = forward_all(module, x)
    assert set(ours) == set(reference)
    errors = {t: relative_error(v, to_nhwc(reference[t], v.shape)) for t, v in ours.items()}
    lrn_effect = relative_error(ours["norm1"], ours["pool1"])
    print(f"caffenet@227: worst {max(errors.values()):.2e}; LRN changes pool1 by {lrn_effect:.2e}")
    assert lrn_effect > 1e-2
    assert max(errors.values()) < TOLERANCE, errors


# --- building blocks against torch.nn.functional ---------------------------------------


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_matches_torch(ceil_mode):
    rng = np.random.default_rng(7)
    for size in (5, 6, 7, 8, 11):
        for kernel, stride, padding in [(3, 2, 0), (3, 2, 1), (2, 2, 1), (3, 1, 1)]:
            x = rng.standard_normal((1, 2, size, size + 1)).astype(np.float32)
            ref = torch.nn.functional.max_pool2d(
                torch.from_numpy(x), kernel, stride, padding, ceil_mode=ceil_mode
            ).numpy()
            ours = jax.jit(layers.max_pool2d, static_argnums=(1, 2, 3, 4))(
                jnp.asarray(x.transpose(0, 2, 3, 1)), kernel, stride, padding, ceil_mode
            )
            np.testing.assert_array_equal(
                ours, ref.transpose(0, 2, 3, 1), err_msg=f"{size} {kernel} {stride} {padding}"
            )


def test_adaptive_avg_pool_matches_torch():
    rng = np.random.default_rng(8)
    pool = jax.jit(layers.adaptive_avg_pool2d, static_argnums=1)
    for size_in, size_out in [(7, 6), (2, 7), (13, 6), (1, 6), (12, 6), (9, 4)]:
        x = rng.standard_normal((2, 3, size_in, size_in + 2)).astype(np.float32)
        ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (size_out, size_out + 1))
        ours = pool(jnp.asarray(x.transpose(0, 2, 3, 1)), (size_out, size_out + 1))
        np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("size", [5, 4])
def test_local_response_norm_matches_torch(size):
    x = (np.random.default_rng(9).standard_normal((2, 7, 4, 4)) * 100).astype(np.float32)
    ref = torch.nn.LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=1.0)(
        torch.from_numpy(x)
    ).numpy()
    ours = layers.local_response_norm(jnp.asarray(x.transpose(0, 2, 3, 1)), size, 1e-4, 0.75, 1.0)
    np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
