"""Units sharded over 8 CPU devices give the single-device images (subprocess)."""

import textwrap
from pathlib import Path

import jax
import numpy as np
from eight_devices import run_on_eight_devices

from cnnvis_jax import am

CHILD = """
import sys
sys.path.insert(0, {tests!r})
import jax
import numpy as np
from test_am_helpers import tiny_model
from test_am_sharded import UNITS, recipe
from cnnvis_jax import am
from cnnvis_jax.am.render import AXIS
from cnnvis_jax.parallel import device_mesh

assert jax.device_count() == 8, jax.devices()
assert device_mesh(AXIS).shape[AXIS] == 8
r = am.render(tiny_model(), [am.channel("conv2", u) for u in UNITS], recipe(), key=3)
np.savez({out!r}, images=r.images, final=r.final_activation, trajectory=r.trajectory)
"""

UNITS = (0, 1, 2, 3, 4)  # 5 jobs: padded to 8 over the mesh


def recipe():
    return am.Recipe(
        name="sharded",
        steps=5,
        param=am.Pixel("unit", None, 10.0),
        optimizer=am.Ascent("progress", max_lr=1e4, desired=0.5),
        post=(am.Blur(0.5, every=2), am.ClipParams()),
    )


def test_sharded_equals_unsharded(tmp_path):
    from test_am_helpers import tiny_model

    out = tmp_path / "sharded.npz"
    code = textwrap.dedent(CHILD).format(tests=str(Path(__file__).parent), out=str(out))
    run_on_eight_devices(code, timeout=600)
    assert jax.device_count() == 1
    sharded = np.load(out)
    single = am.render(tiny_model(), [am.channel("conv2", u) for u in UNITS], recipe(), key=3)
    np.testing.assert_allclose(sharded["images"], single.images, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sharded["final"], single.final_activation, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sharded["trajectory"], single.trajectory, rtol=1e-5, atol=1e-6)
