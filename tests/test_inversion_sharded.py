"""Inversion lanes sharded over 8 CPU devices give the single-device reconstructions
(subprocess; 3 lanes per layer group, padded to 8)."""

import textwrap
from pathlib import Path

import jax
import numpy as np
from eight_devices import run_on_eight_devices

CHILD = """
import sys
sys.path.insert(0, {tests!r})
import jax
import numpy as np
from test_inversion_sharded import run

assert jax.device_count() == 8, jax.devices()
images, error, energy = run()
np.savez({out!r}, images=images, error=error, energy=energy)
"""


def run():
    """Two layers x 3 images of the tiny network, mahendran2016 at 12 steps."""
    from test_inversion_regularized import SIZE, tiny_apply

    from cnnvis_jax.inversion import invert_images
    from cnnvis_jax.model import InputContract, from_function

    rng = np.random.default_rng(0)
    params = {"w1": (0.5 * rng.standard_normal((3, 3, 3, 4))).astype(np.float32),
              "b1": np.full((4,), 0.05, np.float32),
              "w2": (0.1 * rng.standard_normal((6 * 6 * 4, 5))).astype(np.float32)}  # fmt: skip
    contract = InputContract(size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = from_function(tiny_apply, params, input=contract, name="tiny")
    images = np.random.default_rng(1).uniform(0.1, 0.9, (3, *SIZE, 3)).astype(np.float32)
    out = invert_images(model, images, ["conv", "fc"], preset="mahendran2016",
                        key=jax.random.key(0), steps=12)  # fmt: skip
    return (np.stack([out[n].images for n in ("conv", "fc")]),
            np.stack([out[n].feature_error for n in ("conv", "fc")]),
            np.stack([out[n].energy for n in ("conv", "fc")]))  # fmt: skip


def test_sharded_equals_unsharded(tmp_path):
    out = tmp_path / "sharded.npz"
    code = textwrap.dedent(CHILD).format(tests=str(Path(__file__).parent), out=str(out))
    run_on_eight_devices(code, timeout=600)
    assert jax.device_count() == 1
    sharded = np.load(out)
    images, error, energy = run()
    np.testing.assert_allclose(sharded["images"], images, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sharded["error"], error, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(sharded["energy"], energy, rtol=1e-4, atol=1e-5)
