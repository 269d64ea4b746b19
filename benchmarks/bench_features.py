"""Feature extraction images/s at batch 64 on JAX's default device: conceptnet and
alexnet, with a torch forward of the same alexnet weights side by side on the same kind
of device (CPU here, the GPU where torch sees one; ratio in one run).

Run: ``python -m benchmarks.bench_features``. The torch column needs the optional
``torch`` extra (torch + torchvision); without it only the JAX figures are taken.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import best_time, save

BATCH = 64
ALEXNET_TAPS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def jax_images_per_second(model, layers, batch=BATCH) -> float:
    import jax

    from cnnvis_jax.features import make_forward

    forward = make_forward(model, layers)
    h, w = model.input.size
    images = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)

    def run():
        out = forward(model.params, images)
        jax.tree_util.tree_map(np.asarray, out)  # include the copy to host

    return batch / best_time(run, repeats=5, warmup=2)


def torch_alexnet_images_per_second(module, batch=BATCH) -> float | None:
    """torchvision AlexNet holding ``module``'s weights, same taps kept on host.

    On the GPU when torch sees one (as JAX then does), else on the CPU."""
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    from cnnvis_jax.weights import export_state_dict

    net = torchvision.models.alexnet(weights=None).eval()
    state = {
        k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in export_state_dict(module, "alexnet").items()
    }
    net.load_state_dict(state)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = net.to(device)
    taps = {}
    modules = dict(net.named_modules())
    for name in (
        "features.1",
        "features.4",
        "features.7",
        "features.9",
        "features.11",
        "classifier.2",
        "classifier.5",
    ):
        modules[name].register_forward_hook(
            lambda m, i, o, name=name: taps.__setitem__(name, o.cpu().numpy())
        )
    x = torch.rand(batch, 3, 224, 224).to(device)

    def run():
        with torch.no_grad():
            net(x).cpu().numpy()

    return batch / best_time(run, repeats=5, warmup=2)


def main() -> dict:
    import jax

    from cnnvis_jax import zoo

    conceptnet = zoo.random_model("conceptnet", warn=False)
    alexnet_module = zoo.init_module("alexnet")
    alexnet = zoo.as_model(alexnet_module, "alexnet")
    record = {
        "benchmark": "feature extraction",
        "batch": BATCH,
        "threads": "all cores (XLA and torch defaults)",
        "conceptnet_all_taps_images_per_second": jax_images_per_second(
            conceptnet, conceptnet.layer_names
        ),
        "alexnet_224_all_taps_images_per_second": jax_images_per_second(alexnet, ALEXNET_TAPS),
        "alexnet_224_conv5_images_per_second": jax_images_per_second(alexnet, ("conv5",)),
    }
    torch_ips = None
    try:
        import torch

        record["torch_device"] = "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    try:
        torch_ips = torch_alexnet_images_per_second(alexnet_module)
    except Exception as e:  # the torch side is optional; say why it is missing
        record["torch_error"] = repr(e)
    record["torch_alexnet_224_all_taps_images_per_second"] = torch_ips
    if torch_ips:
        record["jax_over_torch_all_taps"] = (
            record["alexnet_224_all_taps_images_per_second"] / torch_ips
        )
    record["jax_devices"] = [str(d) for d in jax.devices()]
    save("features", record)
    return record


if __name__ == "__main__":
    main()
