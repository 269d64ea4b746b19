"""A :class:`Recipe`: everything about *how* to render, apart from the objective.

A recipe is a pytree: its numbers (learning rates, decays, percentiles, weights,
init noise) are data, so a list of recipes that differ only in numbers is a
*sweep* rendered in one vmapped call; its structure (step count, transforms,
policies, which steps run) is static metadata. Published settings are named
recipes in :mod:`cnnvis_jax.am.presets`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cnnvis_jax.am._tree import pytree_dataclass, replace
from cnnvis_jax.errors import InputError

__all__ = ["Anchor", "CenterBias", "Octave", "Recipe"]


@pytree_dataclass(static=("layer",))
class Anchor:
    """Feature Accentuation's tie to the start image (Hamblin et al. 2024, ``faccent``).

    Each step the image ``x`` and the start image ``s`` go through the *same* random
    transforms, and ``weight * d`` is subtracted from the objective, with ``d`` the
    L2 norm over channels of ``a(x_t) - a(s_t)`` at ``layer``, averaged over positions
    (``faccent``'s ``l2_compare``). ``layer`` None: the objective's own layer.
    The render needs start images (``init_images``).
    """

    weight: Any = 1.0
    layer: str | None = None


@dataclasses.dataclass(frozen=True)
class Octave:
    """One octave of MFV's center-bias loop (constants as in the MFV release).

    Attributes:
      iterations: steps in this octave.
      scale: canvas zoom at the start of the octave (1.0: unchanged).
      window: standard deviation of the crop offset, as a fraction of the canvas
        margin ``canvas - input`` (smaller: crops nearer the centre).
      margin: gradient mask width in pixels at ``reference_size``: only the central
        ``[margin, size - margin)`` square of each crop is updated (0: no mask).
      start_step, end_step: step size, linear over the octave (the update is
        ``step / mean|g| * g`` in 0-255 units).
      start_denoise, end_denoise: TV denoising weight (smaller denoises more),
        following the release's schedule ``start - (start - end * i) / iterations``.
    """

    iterations: int
    scale: float = 1.0
    window: float = 0.3
    margin: int = 0
    start_step: float = 1.0
    end_step: float = 1.0
    start_denoise: float = 0.1
    end_denoise: float = 2.0


@dataclasses.dataclass(frozen=True)
class CenterBias:
    """MFV's center-bias regularization: octaves of random crops of a growing canvas.

    Attributes:
      octaves: the :class:`Octave` schedule.
      tv_iterations: fixed iterations of the TV denoiser per step.
      reference_size: input size the margins are given for (227, AlexNet); margins
        scale with the model's input size.
    """

    octaves: tuple[Octave, ...]
    tv_iterations: int = 50
    reference_size: int = 227

    @property
    def steps(self) -> int:
        return sum(o.iterations for o in self.octaves)


@pytree_dataclass(
    static=(
        "name",
        "steps",
        "transforms",
        "redirect_steps",
        "output",
        "objective",
        "center",
        "transparency",
    )
)
class Recipe:
    """How to render.

    Attributes:
      name: a label (preset name).
      steps: optimization steps (each: forward, backward, update, post steps).
      param: the parameterization (:mod:`cnnvis_jax.am.params`).
      optimizer: the update rule (:mod:`cnnvis_jax.am.optimizers`).
      transforms: image transforms before each forward (:mod:`cnnvis_jax.am.transforms`).
      penalties: terms subtracted from the objective (:mod:`cnnvis_jax.am.regularizers`).
      post: steps after each update, in order (decay, blur, percentile clipping, clip).
      redirect_steps: steps at the start that use redirected-ReLU gradients (Lucid: 16).
      output: ``"best"`` (best-so-far image, Yosinski) or ``"last"`` (Lucid, DGN-AM).
      objective: the default objective for a unit of a spatial layer in the command
        line: ``"neuron"`` (centre position) or ``"channel"`` (mean over positions).
      center: MFV's center-bias octaves. They define the whole update (a normalized
        step on a Gaussian-drawn crop of a zooming canvas, clipping, TV denoising),
        so such a recipe has ``steps`` equal to the octaves' and no ``optimizer``,
        ``transforms``, ``penalties``, ``post`` or ``redirect_steps`` (refused, not
        ignored); ``param`` must be a caffe-space
        :class:`~cnnvis_jax.am.params.Pixel`. It runs on the same pre-image engine
        (:mod:`cnnvis_jax.am.center` gives its energy and update).
      anchor: an :class:`Anchor` (Feature Accentuation), or None.
      transparency: accumulate ``|d objective / d image|`` over the steps (MACO's
        transparency map; :attr:`RenderResult.transparency`), at no extra forward.
    """

    name: str
    steps: int
    param: Any
    optimizer: Any
    transforms: tuple = ()
    penalties: tuple = ()
    post: tuple = ()
    redirect_steps: int = 0
    output: str = "best"
    objective: str = "neuron"
    center: CenterBias | None = None
    anchor: Anchor | None = None
    transparency: bool = False

    def __post_init__(self):
        if isinstance(self.steps, int) and self.steps < 1:
            raise InputError(f"steps must be at least 1, got {self.steps}.")
        if self.output not in ("best", "last"):
            raise InputError(f"output must be 'best' or 'last', got {self.output!r}.")
        if self.objective not in ("neuron", "channel"):
            raise InputError(f"objective must be 'neuron' or 'channel', got {self.objective!r}.")
        if self.center is not None:
            self._check_center()

    def _check_center(self) -> None:
        extra = [name for name, given in (
            ("optimizer", self.optimizer is not None),
            ("transforms", len(self.transforms) > 0),
            ("penalties", len(self.penalties) > 0),
            ("post", len(self.post) > 0),
            ("redirect_steps", self.redirect_steps != 0),
            ("anchor", self.anchor is not None),
            ("transparency", self.transparency),
        ) if given]  # fmt: skip
        if extra:
            raise InputError(
                f"recipe {self.name!r} runs MFV's center-bias octaves, which fix the update; "
                f"it cannot also have {', '.join(extra)}: drop them (or drop center)."
            )
        if isinstance(self.steps, int) and self.steps != self.center.steps:
            raise InputError(
                f"recipe {self.name!r} has steps={self.steps} but its center-bias octaves "
                f"take {self.center.steps}; use recipe.with_steps(n) to scale the octaves."
            )

    def with_steps(self, steps: int) -> Recipe:
        """The recipe with ``steps`` steps (center-bias octaves scaled to the total)."""
        steps = int(steps)
        if steps < 1:
            raise InputError(f"--steps must be at least 1, got {steps}.")
        if self.center is None:
            return replace(self, steps=steps)
        total = self.center.steps
        octaves = tuple(
            dataclasses.replace(o, iterations=max(1, round(o.iterations * steps / total)))
            for o in self.center.octaves
        )
        center = dataclasses.replace(self.center, octaves=octaves)
        return replace(self, steps=sum(o.iterations for o in octaves), center=center)
