"""Published activation-maximization settings as named recipes.

============  ==================================================================
``yosinski1``  Yosinski et al. 2015, setting 1: decay 0, blur 0.5 every 4, small
               norm 50 %, contribution 0 %, 500 iterations, "progress" lr
               (max 100, desired progress 2.0)
``yosinski2``  setting 2: decay 0.3, no blur, small norm 20 %, 750 iterations,
               constant lr 100
``yosinski3``  setting 3: decay 0.0001, blur 1.0 every 4, 1000 iterations,
               constant lr 100 (the one used for most images)
``yosinski4``  setting 4: blur 0.5 every 4, contribution 90 %, 1000 iterations,
               "progress" lr (max 1e8, desired progress 2.0)
``simonyan``   Simonyan et al. 2013: class score minus ``lambda ||I||^2`` from the
               zero (mean) image
``lucid``      Olah et al. 2017 (Lucid): Fourier + decorrelated colour + sigmoid,
               Adam(0.05), 512 steps, standard transforms, redirected ReLU for 16
``distill``    the Distill article: as ``lucid`` with Distill's transforms, 2560 steps
``dgn``        Nguyen et al. 2016 (DGN-AM): generator code, ``h += lr / mean|g| g``,
               clip to the code bounds, ``h *= 0.99``, 200 steps, lr 8 -> 1e-10
``mfv-center`` MFV center-bias (``act_max.tvd.center.py``): octaves of random
               centred crops, TV denoising, from grey N(175, 8)
``mfv-mean``   MFV from a facet's mean image (``act_max.tvd.mean.py``) octaves
``maco``       Fel et al. 2023 (MACO, Xplique's ``maco``): phase-only Fourier
               image under the data set's mean amplitude spectrum, 32 random
               crops per step (box 50% -> 5%), noise, Nadam(1.0), 256 steps,
               transparency map
``accentuate`` Hamblin et al. 2024 (Feature Accentuation): from a given image,
               Lucid's parameterization, optimizer and transforms, minus
               ``lambda`` times the feature distance to the image at the unit's
               layer (image and start under the same transforms)
============  ==================================================================

Yosinski et al. step in the network's input blob (for their Caffe models: 0-255
minus the mean colour; here ``Pixel("input")``, the network's normalized input)
and start from the mean plus N(0, 10) (0-255 units); the pixel range is clipped to
[0, 255] before every forward, as in their code. Constant learning rates are
therefore calibrated for networks that take 0-255 input; the "progress" policy
is scale-free. Simonyan et al. publish neither ``lambda`` nor a step
size; ``simonyan`` uses ``lambda = 1e-5`` (0-255 units) and Yosinski's scale-free
"progress" step (max lr 1e8, desired progress 2.0) for 500 steps -- our choice,
flagged in :data:`CHOSEN`. MACO needs the amplitude spectrum of the data set
(``preset("maco", spectrum=natural_spectrum(images, canvas))``; the command line
computes it from ``--dataset``); Feature Accentuation's ``lambda`` and step count
are not fixed by its sources and are chosen here (:data:`CHOSEN`).
"""

from __future__ import annotations

from cnnvis_jax.am.optimizers import Adam, Ascent, Nadam, NormalizedAscent
from cnnvis_jax.am.params import Fourier, Generator, Maco, Pixel
from cnnvis_jax.am.recipe import Anchor, CenterBias, Octave, Recipe
from cnnvis_jax.am.regularizers import (
    L2,
    Blur,
    ClipParams,
    Decay,
    SmallContribution,
    SmallNorm,
)
from cnnvis_jax.am.transforms import distill_transforms, lucid_transforms, maco_transforms
from cnnvis_jax.errors import InputError, did_you_mean

__all__ = ["CHOSEN", "PRESETS", "YOSINSKI", "preset"]

YOSINSKI = {
    # name: (decay, blur radius, blur every, small-norm pct, contribution pct,
    #        iterations, lr policy, lr params)
    "yosinski1": (0.0, 0.5, 4, 50, 0, 500, "progress", {"max_lr": 100.0, "desired": 2.0}),
    "yosinski2": (0.3, 0.0, 0, 20, 0, 750, "constant", {"lr": 100.0}),
    "yosinski3": (0.0001, 1.0, 4, 0, 0, 1000, "constant", {"lr": 100.0}),
    "yosinski4": (0.0, 0.5, 4, 0, 90, 1000, "progress", {"max_lr": 1e8, "desired": 2.0}),
}
"""Yosinski et al.'s four published settings, in the reference's column order."""

LUCID_LR, LUCID_STEPS, DISTILL_STEPS, REDIRECT_STEPS = 0.05, 512, 2560, 16
DGN_STEPS, DGN_START_LR, DGN_END_LR, DGN_DECAY = 200, 8.0, 1e-10, 0.01
MACO_STEPS, MACO_LR = 256, 1.0
ACCENTUATE_LAMBDA, ACCENTUATE_STEPS = 0.1, 256

MFV_CENTER = (
    Octave(190, 1.0, 0.3, 0, 11.0, 11.0, 0.001, 0.05),
    Octave(150, 1.2, 0.3, 0, 6.0, 6.0, 0.01, 0.08),
    Octave(150, 1.2, 0.3, 0, 1.0, 1.0, 0.01, 2.0),
    Octave(30, 1.0, 0.1, 50, 3.0, 3.0, 0.1, 2.0),
    Octave(10, 1.0, 0.3, 0, 6.0, 3.0, 0.01, 2.0),
)
"""``act_max.tvd.center.py``'s octaves (iterations, scale, window, margin, step
start/end, denoise start/end)."""

MFV_MEAN = (
    Octave(190, 1.0, 0.3, 0, 1.0, 2.0, 0.4, 0.4),
    Octave(150, 1.2, 0.3, 0, 1.0, 1.0, 0.01, 2.0),
    Octave(20, 1.0, 0.2, 50, 2.0, 2.0, 0.1, 2.0),
    Octave(10, 1.0, 0.3, 0, 2.0, 2.0, 0.4, 2.0),
)
"""``act_max.tvd.mean.py``'s octaves (for starts from a facet's mean image)."""

CHOSEN = {
    "simonyan": {"l2": 1e-5, "steps": 500, "max_lr": 1e8, "desired": 2.0},
    "accentuate": {"lambda": ACCENTUATE_LAMBDA, "steps": ACCENTUATE_STEPS},
}
"""Settings the sources do not publish, chosen here."""


def _yosinski(name: str) -> Recipe:
    decay, radius, every, small_norm, contribution, iters, policy, lr = YOSINSKI[name]
    post = [Decay(decay)]
    if every and radius > 0:
        post.append(Blur(radius, every=every))
    if small_norm:
        post.append(SmallNorm(float(small_norm)))
    if contribution:
        post.append(SmallContribution(float(contribution)))
    post.append(ClipParams())
    if policy == "progress":
        optimizer = Ascent("progress", max_lr=lr["max_lr"], desired=lr["desired"])
    else:
        optimizer = Ascent("constant", lr=lr["lr"])
    return Recipe(
        name=name,
        steps=iters,
        param=Pixel("input", None, 10.0),
        optimizer=optimizer,
        post=tuple(post),
        output="best",
        objective="neuron",
    )


def _simonyan() -> Recipe:
    c = CHOSEN["simonyan"]
    return Recipe(
        name="simonyan",
        steps=c["steps"],
        param=Pixel("input", None, 0.0),
        optimizer=Ascent("progress", max_lr=c["max_lr"], desired=c["desired"]),
        penalties=(L2(c["l2"]),),
        post=(ClipParams(),),
        output="best",
        objective="neuron",
    )


def _lucid(name: str, steps: int, transforms: tuple) -> Recipe:
    return Recipe(
        name=name,
        steps=steps,
        param=Fourier(0.01),
        optimizer=Adam(LUCID_LR),
        transforms=transforms,
        redirect_steps=REDIRECT_STEPS,
        output="last",
        objective="channel",
    )


def _dgn(generator: Generator | None) -> Recipe:
    if generator is None:
        raise InputError(
            "the dgn preset needs a generator: preset('dgn', generator=Generator(...)), or "
            "--generator PATH (a decoder saved by cnnvis_jax.inversion) on the command line."
        )
    if not isinstance(generator, Generator):
        raise InputError(f"generator must be an am.Generator, got {type(generator).__name__}.")
    return Recipe(
        name="dgn",
        steps=DGN_STEPS,
        param=generator,
        optimizer=NormalizedAscent(DGN_START_LR, DGN_END_LR),
        post=(ClipParams(), Decay(DGN_DECAY)),
        output="last",
        objective="neuron",
    )


def _maco(spectrum) -> Recipe:
    if spectrum is None:
        raise InputError(
            "the maco preset needs the data set's amplitude spectrum: preset('maco', "
            "spectrum=am.natural_spectrum(images, canvas)), or --dataset on the command line."
        )
    return Recipe(
        name="maco",
        steps=MACO_STEPS,
        param=Maco(spectrum),
        optimizer=Nadam(MACO_LR),
        transforms=maco_transforms(),
        output="last",
        objective="channel",
        transparency=True,
    )


def _accentuate() -> Recipe:
    return Recipe(
        name="accentuate",
        steps=ACCENTUATE_STEPS,
        param=Fourier(0.01),
        optimizer=Adam(LUCID_LR),
        transforms=lucid_transforms(),
        output="last",
        objective="channel",
        anchor=Anchor(ACCENTUATE_LAMBDA),
    )


def _mfv(name: str, octaves: tuple) -> Recipe:
    center = CenterBias(octaves)
    return Recipe(
        name=name,
        steps=center.steps,
        param=Pixel("caffe", 175.0, 8.0),
        optimizer=None,
        output="last",
        objective="neuron",
        center=center,
    )


PRESETS = (
    "yosinski1",
    "yosinski2",
    "yosinski3",
    "yosinski4",
    "simonyan",
    "lucid",
    "distill",
    "dgn",
    "mfv-center",
    "mfv-mean",
    "maco",
    "accentuate",
)


def preset(name: str, *, generator: Generator | None = None, spectrum=None) -> Recipe:
    """The recipe of a published setting (see the module docstring).

    Args:
      name: one of :data:`PRESETS`.
      generator: DGN-AM's generator (``dgn`` only).
      spectrum: MACO's amplitude spectrum (3, H, W // 2 + 1) from
        :func:`~cnnvis_jax.am.params.natural_spectrum` (``maco`` only); (H, W) is the
        canvas, e.g. twice the model's input size.

    Raises:
      InputError: unknown name (the message lists the presets); ``dgn`` without a
        generator; ``maco`` without a spectrum.
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; " + did_you_mean(str(name), PRESETS))
    if name in YOSINSKI:
        return _yosinski(name)
    if name == "simonyan":
        return _simonyan()
    if name == "lucid":
        return _lucid(name, LUCID_STEPS, lucid_transforms())
    if name == "distill":
        return _lucid(name, DISTILL_STEPS, distill_transforms())
    if name == "dgn":
        return _dgn(generator)
    if name == "maco":
        return _maco(spectrum)
    if name == "accentuate":
        return _accentuate()
    if name == "mfv-center":
        return _mfv(name, MFV_CENTER)
    return _mfv(name, MFV_MEAN)
