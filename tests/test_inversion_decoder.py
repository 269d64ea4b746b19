"""UpconvNet decoders: designs, files, refusal of foreign checkpoints, training that
lowers the loss, exact resumption, and sharded == unsharded training."""

from __future__ import annotations

import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eight_devices import run_on_eight_devices
from jax import lax

from cnnvis_jax.errors import InputError, WeightsError
from cnnvis_jax.inversion import (
    Decoder,
    DecoderConfig,
    check_decoder,
    design,
    fingerprint,
    load_decoder,
    reconstruct,
    save_decoder,
    train_decoder,
)
from cnnvis_jax.inversion.decoder import init_params
from cnnvis_jax.inversion.io import read_record
from cnnvis_jax.model import InputContract, from_function

DN = ("NHWC", "HWIO", "NHWC")


def tiny_apply(params, x):
    """conv 3x3/2 (4) -> ReLU -> fc (8) -> ReLU."""
    c = lax.conv_general_dilated(x, params["w1"], (2, 2), "SAME", dimension_numbers=DN)
    a = jax.nn.relu(c + 0.05)
    return {"conv": a, "fc": jax.nn.relu(a.reshape(a.shape[0], -1) @ params["w2"])}


def tiny_model(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {
        "w1": jnp.asarray(0.5 * rng.standard_normal((3, 3, 3, 4)), jnp.float32),
        "w2": jnp.asarray(0.05 * rng.standard_normal((16 * 16 * 4, 8)), jnp.float32),
    }
    contract = InputContract(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return from_function(tiny_apply, params, input=contract, name="tiny")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def source():
    from cnnvis_jax.data.concepts import ConceptSet

    return ConceptSet(64, split="train", image_size=32)


CONFIG = DecoderConfig(layer="fc", steps=12, batch_size=8, learning_rate=3e-3, checkpoint_every=4,
                       scale_images=16)  # fmt: skip


def test_designs_follow_the_feature_shape():
    conv = design((8, 8, 128), (64, 64))
    assert conv.kind == "conv" and conv.convs == (64, 64) and conv.ups == (32, 16, 16)
    fc = design((256,), (64, 64))
    assert fc.kind == "fc" and fc.fcs == (512, 4 * 4 * 128) and len(fc.ups) == 4
    odd = design((7, 7, 3), (32, 32))  # not a power-of-two ratio: final resize
    d = Decoder(init_params(odd, jax.random.key(0)), odd, "x", "m", "f", 1.0)
    out = jax.jit(lambda dec, f: dec(f))(d, jnp.ones((2, 7, 7, 3)))
    assert out.shape == (2, 32, 32, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(InputError, match="take"):
        d(jnp.ones((2, 8, 8, 3)))


@pytest.fixture(scope="module")
def trained(tiny, source, tmp_path_factory):
    out = tmp_path_factory.mktemp("decoder_full")
    decoder = train_decoder(tiny, CONFIG, out, source=source, progress=False)
    return out, decoder


def test_training_lowers_the_loss_and_saves_a_loadable_decoder(trained, tiny):
    out, decoder = trained
    losses = read_record(out)["training"]["losses"]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    loaded = load_decoder(out / "decoder.safetensors")
    assert (loaded.layer, loaded.model_name, loaded.feature_shape) == ("fc", "tiny", (8,))
    assert loaded.model_fingerprint == fingerprint(tiny)
    for k, v in decoder.params.items():
        np.testing.assert_array_equal(np.asarray(loaded.params[k]), np.asarray(v))
    images = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
    rec = reconstruct(tiny, loaded, images)
    assert rec.shape == (3, 32, 32, 3) and rec.min() >= 0 and rec.max() <= 1
    assert (out / "decoder.json").exists()
    with open(out / "decoder.safetensors", "rb") as f:
        assert b"pickle" not in f.read(4096)


def test_resume_equals_uninterrupted(trained, tiny, source, tmp_path):
    _, full = trained
    stopped = train_decoder(
        tiny, CONFIG, tmp_path, source=source, progress=False, stop_after_steps=6
    )
    assert stopped == {"interrupted": True, "step": 6}
    resumed = train_decoder(tiny, CONFIG, tmp_path, source=source, progress=False)
    for k, v in full.params.items():
        np.testing.assert_array_equal(np.asarray(resumed.params[k]), np.asarray(v), err_msg=k)
    other = DecoderConfig(layer="fc", steps=13, batch_size=8)
    with pytest.raises(InputError, match="other settings"):
        train_decoder(tiny, other, tmp_path, source=source, progress=False)


def test_foreign_decoders_are_refused(trained, tiny, tmp_path):
    out, decoder = trained
    with pytest.raises(InputError, match=r"layer 'fc' of model 'tiny'.*not for layer 'conv'"):
        check_decoder(decoder, tiny, "conv")
    other = tiny_model(seed=1)
    with pytest.raises(
        InputError, match=r"weights [0-9a-f]{16}\), not for layer 'fc' of model 'tiny' \(weights"
    ):
        reconstruct(other, decoder, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(WeightsError, match="does not exist"):
        load_decoder(tmp_path / "missing.safetensors")
    save_decoder(decoder, tmp_path)
    assert load_decoder(tmp_path).layer == "fc"


CHILD = """
import sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
from test_inversion_decoder import CONFIG, tiny_model
from cnnvis_jax.data.concepts import ConceptSet
from cnnvis_jax.inversion import train_decoder
import dataclasses
assert jax.device_count() == 8
config = dataclasses.replace(CONFIG, steps=4, checkpoint_every=0)
d = train_decoder(tiny_model(), config, {out!r}, source=ConceptSet(64, split="train", image_size=32),
                  progress=False)
np.savez({npz!r}, **{{k: np.asarray(v) for k, v in d.params.items()}})
"""


def test_sharded_training_equals_single_device(tiny, source, tmp_path):
    import dataclasses

    npz = tmp_path / "sharded.npz"
    code = textwrap.dedent(CHILD).format(
        tests=os.path.dirname(__file__), out=str(tmp_path / "sharded"), npz=str(npz)
    )
    run_on_eight_devices(code)
    config = dataclasses.replace(CONFIG, steps=4, checkpoint_every=0)
    single = train_decoder(tiny, config, tmp_path / "single", source=source, progress=False)
    sharded = np.load(npz)
    for k, v in single.params.items():
        np.testing.assert_allclose(sharded[k], np.asarray(v), rtol=1e-3, atol=2e-5, err_msg=k)
