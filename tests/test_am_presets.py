"""Preset constants against the published values (the reference table), and plans."""

import numpy as np
import pytest

from cnnvis_jax import am
from cnnvis_jax.am import presets
from cnnvis_jax.am.render import _phases
from cnnvis_jax.am.transforms import DISTILL_ANGLES, DISTILL_SCALES, LUCID_ANGLES, LUCID_SCALES
from cnnvis_jax.errors import InputError
from cnnvis_jax.preimage.engine import chunks

# Yosinski et al. 2015: (decay, blur radius, blur every, small-norm pct, contribution pct,
# iterations, lr policy, max lr / lr, desired progress)
PUBLISHED = {
    "yosinski1": (0.0, 0.5, 4, 50, 0, 500, "progress", 100.0, 2.0),
    "yosinski2": (0.3, 0.0, 0, 20, 0, 750, "constant", 100.0, None),
    "yosinski3": (0.0001, 1.0, 4, 0, 0, 1000, "constant", 100.0, None),
    "yosinski4": (0.0, 0.5, 4, 0, 90, 1000, "progress", 1e8, 2.0),
}


def _post(recipe, kind):
    return [op for op in recipe.post if isinstance(op, kind)]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_yosinski_settings(name):
    decay, radius, every, norm_pct, contrib_pct, iters, policy, lr, desired = PUBLISHED[name]
    r = am.preset(name)
    assert r.steps == iters and r.output == "best"
    assert _post(r, am.Decay)[0].rate == decay
    blur = _post(r, am.Blur)
    assert (blur[0].radius, blur[0].every) == (radius, every) if radius else not blur
    assert [op.percentile for op in _post(r, am.SmallNorm)] == ([norm_pct] if norm_pct else [])
    contrib = [op.percentile for op in _post(r, am.SmallContribution)]
    assert contrib == ([contrib_pct] if contrib_pct else [])
    assert isinstance(r.post[-1], am.ClipParams)
    assert r.optimizer.policy == policy
    if policy == "progress":
        assert (r.optimizer.max_lr, r.optimizer.desired) == (lr, desired)
    else:
        assert r.optimizer.lr == lr
    assert r.param.init_sd == 10.0 and r.param.space == "input"


def test_lucid_distill_dgn_mfv_settings():
    lucid = am.preset("lucid")
    assert (lucid.steps, lucid.optimizer.lr, lucid.param.init_sd) == (512, 0.05, 0.01)
    assert lucid.redirect_steps == 16 and lucid.output == "last"
    assert isinstance(lucid.param, am.Fourier) and lucid.param.decorrelate and lucid.param.sigmoid
    pad, j1, scale, rotate, j2 = lucid.transforms
    assert (pad.width, pad.value, j1.d, j2.d) == (12, 0.5, 8, 4)
    assert scale.factors == LUCID_SCALES and len(LUCID_SCALES) == 11
    assert LUCID_SCALES[0] == pytest.approx(0.90) and LUCID_SCALES[-1] == pytest.approx(1.10)
    assert rotate.angles == LUCID_ANGLES and LUCID_ANGLES.count(0.0) == 6
    assert min(LUCID_ANGLES) == -10 and max(LUCID_ANGLES) == 10
    distill = am.preset("distill")
    assert distill.steps == 2560
    pad, j1, scale, rotate, j2, crop = distill.transforms
    assert (pad.width, j1.d, j2.d) == (16, 16, 8) and isinstance(crop, am.Crop)
    assert scale.factors == DISTILL_SCALES == (1.0, 0.975, 1.025, 0.95, 1.05)
    assert rotate.angles == DISTILL_ANGLES == tuple(float(a) for a in range(-5, 6))
    assert (presets.DGN_STEPS, presets.DGN_START_LR, presets.DGN_DECAY) == (200, 8.0, 0.01)
    assert presets.DGN_END_LR < 1e-6
    center, mean = am.preset("mfv-center"), am.preset("mfv-mean")
    assert center.center.octaves == presets.MFV_CENTER and mean.center.octaves == presets.MFV_MEAN
    assert [o.iterations for o in center.center.octaves] == [190, 150, 150, 30, 10]
    assert center.param.init_value == 175.0 and center.param.init_sd == 8.0
    assert center.center.octaves[3].margin == 50 and center.center.octaves[3].window == 0.1
    maco = am.preset("maco", spectrum=np.ones((3, 8, 5), np.float32))
    crops, noise = maco.transforms
    assert (maco.steps, maco.optimizer.lr, crops.views) == (256, 1.0, 32)  # Xplique's defaults
    assert (crops.box_start, crops.box_end, crops.center_sd, crops.size_sd) == (
        0.5,
        0.05,
        0.15,
        0.05,
    )
    assert noise.sd == 0.08 / 2 and maco.transparency and maco.param.canvas == (8, 8)
    accent = am.preset("accentuate")
    assert accent.anchor.weight == presets.CHOSEN["accentuate"]["lambda"]
    assert accent.transforms == am.lucid_transforms() and accent.redirect_steps == 0


def test_unknown_preset_lists_them():
    with pytest.raises(InputError, match="unknown preset 'yosinski5'.*yosinski1.*mfv-mean"):
        am.preset("yosinski5")
    assert set(am.PRESETS) == {
        "yosinski1", "yosinski2", "yosinski3", "yosinski4", "simonyan",
        "lucid", "distill", "dgn", "mfv-center", "mfv-mean", "maco", "accentuate",
    }  # fmt: skip


def test_step_phases_split_at_the_redirect_boundary():
    assert _phases(40, 16) == [16, 24]
    assert _phases(40, 0) == [40]
    assert _phases(10, 16) == [10]
    assert [tuple(c) for c in chunks(_phases(40, 16), 10)] == [
        (0, 0, 10, 0, True), (0, 10, 6, 10, False), (1, 0, 10, 16, True),
        (1, 10, 10, 26, False), (1, 20, 4, 36, False),
    ]  # fmt: skip
    assert sum(c.length for c in chunks(_phases(37, 16), 5)) == 37
    steps = am.preset("mfv-mean").with_steps(40)
    assert steps.steps == sum(o.iterations for o in steps.center.octaves)
    assert all(o.iterations >= 1 for o in steps.center.octaves)


def test_center_bias_recipe_refuses_fields_its_octaves_replace():
    from cnnvis_jax.am._tree import replace

    center = am.preset("mfv-center")
    assert center.optimizer is None and center.steps == center.center.steps
    for changes, named in (
        ({"optimizer": am.Adam(0.05)}, "optimizer"),
        ({"transforms": (am.Jitter(4),)}, "transforms"),
        ({"post": (am.ClipParams(),)}, "post"),
        ({"redirect_steps": 8}, "redirect_steps"),
    ):
        with pytest.raises(InputError, match=f"center-bias octaves.*{named}"):
            replace(center, **changes)
    with pytest.raises(InputError, match="steps=12 but its center-bias octaves take 530"):
        replace(center, steps=12)
    assert center.with_steps(12).steps == sum(
        o.iterations for o in center.with_steps(12).center.octaves
    )


def test_inversion_presets_are_found_by_the_same_call():
    from cnnvis_jax import inversion

    assert inversion.preset("mahendran2016") is inversion.presets.PRESETS["mahendran2016"]
    with pytest.raises(InputError, match="unknown inversion preset 'lucid'.*mahendran2015"):
        inversion.preset("lucid")
