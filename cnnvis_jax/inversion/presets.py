"""Published settings of regularized inversion, as named presets.

A preset is a frozen dataclass whose defaults are the published constants (see
``reference/inversion.md``); :meth:`plan` resolves it for one layer of one model
into a :class:`Plan`, the flat description the optimizer runs. Override any
constant with ``dataclasses.replace(preset, ...)`` (e.g. ``lambda_tv=0`` to switch
a prior off); a :class:`Plan` can also be written by hand.

Both presets work in the papers' units: the variable ``u`` is the mean-subtracted
image on the 0-255 scale, ``image01 = mean + u / 255`` with the model's input mean
(see :mod:`cnnvis_jax.inversion.regularized`).

``mahendran2015`` (CVPR'15, deep-goggle)::

    E(u) = ‖Φ − Φ0‖²/‖Φ0‖² + (λ_TV/2)/B² Σ (d1²+d2²)^{β/2} + (λ_α/2)/B² Σ u^α
    α = 6, β = 2, λ_α = 8e-10, λ_TV = 1 (conv1…relu2), 10 (pool2…relu4),
    100 (conv5…fc8); B = 27098.1 (for a 227×227 image); init u = B n/‖n‖;
    step v = 0.9 v − lr·B²·∇E, lr = 0.004 × [1 (100 it), 0.1 (200), 0.01 (100)],
    momentum reset at each change; no jitter, no box constraint.

B is the norm of a whole mean-subtracted 227×227×3 image; at another input size
the same per-value scale is kept, ``B · sqrt(H·W / 227²)`` (exactly B at 227 px), so
that every term keeps its published weight relative to the others.

``mahendran2016`` (IJCV'16, nnpreimage)::

    E(u) = C ‖Φ − Φ0‖²/‖Φ0‖² + λ_β TV^β(u)/(H W) + λ_α Σ_ij ‖u_ij‖^α/(H W)
    C = 300, α = 6, β = 2, B = 80, B+ = 160, λ_α = (1/B)^α, λ_β = (6.5/B)^β;
    lr = 0.05 B²/α, times H·W in the step; G = 0.9 G + g², v = 0.9 v − g/(1/lr + √G);
    300 iterations with jitter J = max(round(stride/4), 1) (stride of the layer's
    receptive field), then 50 at 0.1 lr with J = 1 starting from the first result;
    every pixel's colour norm projected to ≤ B+; init uniform, scaled so its 95%
    quantile is B/√3.

C is the code's ``objectiveWeight`` (``exp_inversion.m`` divides it by ‖Φ0‖²); the
authors' inversion experiments run every layer with C ∈ {1, 20, 100, 300}
(``exp_all.m``). With C = 1 (the code's bare default) the priors outweigh the data
term by two orders of magnitude at the original image, and even conv1 comes out
blurred and washed out, at the published image size too; the preset uses C = 300,
the published value that reconstructs conv1 nearly exactly (see ``docs/inversion.md``,
"mahendran2016: the authors' energy, term by term"). No constant depends on the
image size: TV and the α-norm are per-pixel averages and B, V = B/6.5 are per-pixel
scales of the 0-255 image.
"""

from __future__ import annotations

import dataclasses
import math

from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model

__all__ = [
    "PRESETS",
    "Mahendran2015",
    "Mahendran2016",
    "Plan",
    "Stage",
    "preset",
    "lambda_tv_group",
    "layer_stride",
]

CVPR15_SIZE = (227, 227)
"""Image size at which CVPR'15's B = 27098.1 was estimated."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One optimization run: ``schedule = ((lr, steps), ...)`` and the jitter
    amount ``J`` (the canvas is ``J − 1`` pixels larger than the image; each step
    looks at a random crop)."""

    schedule: tuple[tuple[float, int], ...]
    jitter: int = 1

    @property
    def steps(self) -> int:
        return sum(int(n) for _, n in self.schedule)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the inversion loop needs for one layer (all hashable).

    Attributes:
      convention: ``"cvpr15"`` (sums over values; ``optimizer="momentum"``) or
        ``"ijcv16"`` (per-pixel norms divided by H·W; ``optimizer="adagrad"``).
      alpha, beta: exponents of the α-norm and TV^β.
      lambda_alpha, lambda_tv: final multipliers of the two priors in E.
      grad_scale: the step uses ``grad_scale · ∇E`` (CVPR'15: B²).
      rate_scale_pixels: multiply learning rates by the image's H·W (IJCV'16).
      momentum: μ of both optimizers.
      bound: B+ pixel-norm projection after each step, or ``None``.
      init: ``"gaussian"`` (u = init_scale · n/‖n‖) or ``"uniform"`` (95% quantile
        scaled to init_scale/√3).
      init_scale: B of the initialization.
      stages: the runs; a later stage starts from the centre of the previous one
        with fresh optimizer state.
      data_weight: C, the multiplier of the normalized data term
        ``‖mask(Φ − Φ0)‖²/‖mask Φ0‖²`` in E (IJCV'16's ``objectiveWeight``; 1 for
        CVPR'15). The reported feature error is the normalized term without C.
    """

    convention: str
    alpha: float
    beta: float
    lambda_alpha: float
    lambda_tv: float
    grad_scale: float
    rate_scale_pixels: bool
    momentum: float
    bound: float | None
    init: str
    init_scale: float
    stages: tuple[Stage, ...]
    data_weight: float = 1.0
    name: str = "custom"

    def __post_init__(self):
        if self.convention not in ("cvpr15", "ijcv16"):
            raise InputError(
                f"plan convention must be 'cvpr15' or 'ijcv16', got {self.convention!r}."
            )
        if self.init not in ("gaussian", "uniform"):
            raise InputError(f"plan init must be 'gaussian' or 'uniform', got {self.init!r}.")
        if not self.stages:
            raise InputError("a plan needs at least one stage.")
        if not self.data_weight > 0:
            raise InputError(f"plan data_weight (C) must be positive, got {self.data_weight!r}.")

    @property
    def optimizer(self) -> str:
        return "momentum" if self.convention == "cvpr15" else "adagrad"

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def with_steps(self, steps: int) -> Plan:
        """The same plan with its schedule pieces scaled to exactly ``steps`` in total
        (piece boundaries rounded), for quick runs and tests. A piece that rounds to no
        steps is left out, and so is a stage left with none: with fewer steps than
        pieces, the first pieces of the schedule run."""
        if steps < 1:
            raise InputError(f"steps must be at least 1, got {steps}.")
        factor = steps / self.steps
        done = 0  # steps of the scaled schedule so far
        total = 0  # steps of the original schedule so far
        stages = []
        for s in self.stages:
            pieces = []
            for lr, n in s.schedule:
                total += n
                count = max(round(total * factor) - done, 0)
                if count == 0 and done == 0:  # the schedule starts with its first piece
                    count = 1
                done += count
                if count:
                    pieces.append((lr, count))
            if pieces:
                stages.append(dataclasses.replace(s, schedule=tuple(pieces)))
        return dataclasses.replace(self, stages=tuple(stages))

    def without_priors(self) -> Plan:
        return dataclasses.replace(self, lambda_alpha=0.0, lambda_tv=0.0)


# --- layer properties -------------------------------------------------------------------

_TV_GROUPS = {
    # CVPR'15 Sec. 4 on AlexNet: conv1…relu2 -> 1, pool2…relu4 -> 10, conv5…fc8 -> 100.
    0: ("conv1", "relu1", "norm1", "pool1", "conv2", "relu2"),
    1: ("norm2", "pool2", "conv3", "relu3", "conv4", "relu4"),
    2: ("conv5", "relu5", "pool5", "fc6", "relu6", "fc7", "relu7", "fc8"),
}


def lambda_tv_group(model: Model, layer: str) -> int:
    """Depth group 0/1/2 of CVPR'15's λ_TV table for ``layer``.

    Survey names (and their ``_pre`` forms) are looked up in the table; layers of
    other models fall into thirds of the layer catalog by position.
    """
    name = model.resolve(layer)
    base = name[: -len("_pre")] if name.endswith("_pre") else name
    for group, names in _TV_GROUPS.items():
        if base in names:
            return group
    position = model.layer_names.index(name) / max(len(model.layer_names) - 1, 1)
    return min(int(position * 3), 2)


def layer_stride(model: Model, layer: str) -> int:
    """The receptive-field stride of ``layer`` (rows); for layers that see the whole
    image, the stride of the last spatial layer before them."""
    name = model.resolve(layer)
    stride = 1
    for info in model.layers:
        if info.receptive_field is not None:
            stride = int(info.receptive_field.stride[0])
        if info.name == name:
            break
    return stride


def matlab_round(x: float) -> int:
    """MATLAB's round (halves away from zero), for the jitter formula."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


# --- presets ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mahendran2015:
    """CVPR'15 constants (see module docstring); ``lambda_tv`` overrides the table."""

    alpha: float = 6.0
    beta: float = 2.0
    lambda_alpha: float = 8e-10
    lambda_tv_by_depth: tuple[float, float, float] = (1.0, 10.0, 100.0)
    lambda_tv: float | None = None
    B: float = 27098.1
    B_size: tuple[int, int] = CVPR15_SIZE
    learning_rate: float = 0.004
    schedule: tuple[tuple[float, int], ...] = ((1.0, 100), (0.1, 200), (0.01, 100))
    momentum: float = 0.9
    name: str = "mahendran2015"

    def image_B(self, size: tuple[int, int]) -> float:
        """B at image size ``(H, W)``: the same per-value scale as at ``B_size``."""
        return self.B * math.sqrt(size[0] * size[1] / (self.B_size[0] * self.B_size[1]))

    def plan(self, model: Model, layer: str) -> Plan:
        lam_tv = (
            self.lambda_tv
            if self.lambda_tv is not None
            else self.lambda_tv_by_depth[lambda_tv_group(model, layer)]
        )
        B = self.image_B(model.input.size)
        return Plan(
            convention="cvpr15",
            alpha=self.alpha,
            beta=self.beta,
            lambda_alpha=self.lambda_alpha / 2 / B**2,
            lambda_tv=lam_tv / 2 / B**2,
            grad_scale=B**2,
            rate_scale_pixels=False,
            momentum=self.momentum,
            bound=None,
            init="gaussian",
            init_scale=B,
            stages=(Stage(tuple((self.learning_rate * f, n) for f, n in self.schedule), 1),),
            name=self.name,
        )


@dataclasses.dataclass(frozen=True)
class Mahendran2016:
    """IJCV'16 constants (see module docstring); derived λ's and lr are properties.

    ``C`` weighs the normalized data term (the code's ``objectiveWeight``): one of
    the published 1, 20, 100, 300; larger is sharper and closer to the target."""

    C: float = 300.0
    alpha: float = 6.0
    beta: float = 2.0
    B: float = 80.0
    B_plus: float = 160.0
    tv_numerator: float = 6.5
    lr_factor: float = 0.05
    fast_steps: int = 300
    slow_steps: int = 50
    slow_factor: float = 0.1
    momentum: float = 0.9
    jitter: bool = True
    name: str = "mahendran2016"

    @property
    def lambda_alpha(self) -> float:
        return (1.0 / self.B) ** self.alpha

    @property
    def lambda_beta(self) -> float:
        return (self.tv_numerator / self.B) ** self.beta

    @property
    def learning_rate(self) -> float:
        return self.lr_factor * self.B**2 / self.alpha

    def jitter_for(self, model: Model, layer: str) -> int:
        if not self.jitter:
            return 1
        return max(matlab_round(layer_stride(model, layer) / 4), 1)

    def plan(self, model: Model, layer: str) -> Plan:
        lr = self.learning_rate
        return Plan(
            convention="ijcv16",
            alpha=self.alpha,
            beta=self.beta,
            lambda_alpha=self.lambda_alpha,
            lambda_tv=self.lambda_beta,
            grad_scale=1.0,
            rate_scale_pixels=True,
            momentum=self.momentum,
            bound=self.B_plus,
            init="uniform",
            init_scale=self.B,
            stages=(
                Stage(((lr, self.fast_steps),), self.jitter_for(model, layer)),
                Stage(((self.slow_factor * lr, self.slow_steps),), 1),
            ),
            data_weight=self.C,
            name=self.name,
        )


PRESETS = {"mahendran2015": Mahendran2015(), "mahendran2016": Mahendran2016()}


def preset(name: str):
    """The preset called ``name`` (``mahendran2015`` or ``mahendran2016``): an object
    whose ``plan(model, layer)`` gives the :class:`Plan` of a layer (inversion's
    constants depend on the layer: its TV weight group and its stride). The same call
    as :func:`cnnvis_jax.am.preset`, whose recipes do not depend on the layer."""
    from cnnvis_jax.errors import did_you_mean

    if name not in PRESETS:
        raise InputError(f"unknown inversion preset {name!r}; " + did_you_mean(name, list(PRESETS)))
    return PRESETS[name]
