"""Adversarial examples: FGSM and PGD as one minimization in an L-inf ball.

An attack looks for an image ``x'`` near a clean image ``x`` that the network puts in
another class. Both published attacks minimize the class margin

    m(x') = z_y(x') - max_{j != y} z_j(x')          (y: the class attacked)

over ``||x' - x||_inf <= epsilon`` and ``x'`` in ``[0, 1]``; the attack succeeds when
``m(x') < 0``. It runs on the pre-image engine (:mod:`cnnvis_jax.preimage.engine`):
the images are its lanes, the energy is the margin, the update rule an optax
transformation (:func:`~cnnvis_jax.preimage.updates.sign_descent`: the sign of the
gradient times ``-step_size``) followed by the projection onto the ball and the
image range:

* FGSM (Goodfellow et al. 2015): one step of size ``epsilon`` from ``x``.
* PGD (Madry et al. 2018): a uniform random start in the ball, then ``steps`` steps
  of size ``step_size`` (default ``2.5 * epsilon / steps``, Madry's choice), each
  projected; the image with the lowest margin seen is kept.

The margin (Carlini & Wagner's loss) replaces the cross-entropy of the original
papers: both attacks then minimize the quantity that decides success, and a
saturated softmax cannot stall them. The class attacked is the network's own
prediction on the clean image, so an attack needs no labels and "success" means
the prediction changed.

Images are float32 NHWC in ``[0, 1]`` at the model's input size (the contract of
:meth:`cnnvis_jax.Model.apply`); ``epsilon`` is in those units (8/255 is a common
budget for 8-bit images).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model, check_images
from cnnvis_jax.preimage import engine
from cnnvis_jax.preimage.updates import sign_descent

__all__ = ["Adversarial", "Attack", "attack", "example_grid", "fgsm", "margins", "pgd"]


@dataclasses.dataclass(frozen=True)
class Attack:
    """One attack's settings.

    Attributes:
      name: ``fgsm`` or ``pgd`` (for tables and file names).
      epsilon: radius of the L-inf ball, in [0, 1] pixel units (> 0).
      steps: signed-gradient steps (FGSM: 1).
      step_size: size of each step.
      random_start: start from a uniform draw in the ball (PGD) instead of ``x``.
    """

    name: str
    epsilon: float
    steps: int
    step_size: float
    random_start: bool

    def __post_init__(self):
        if not np.isfinite(self.epsilon) or not 0.0 < self.epsilon <= 1.0:
            raise InputError(
                f"epsilon must be in (0, 1] (pixel units; 8/255 = {8 / 255:.4f} is common), "
                f"got {self.epsilon}."
            )
        if self.steps < 1:
            raise InputError(f"an attack needs at least one step, got {self.steps}.")
        if not np.isfinite(self.step_size) or self.step_size <= 0:
            raise InputError(f"step_size must be > 0, got {self.step_size}.")


def fgsm(epsilon: float) -> Attack:
    """The fast gradient sign method: one step of ``epsilon`` from the clean image."""
    return Attack("fgsm", float(epsilon), 1, float(epsilon), False)


def pgd(epsilon: float, steps: int = 10, step_size: float | None = None) -> Attack:
    """Projected gradient descent from a random start (Madry et al.'s settings)."""
    size = 2.5 * float(epsilon) / max(int(steps), 1) if step_size is None else float(step_size)
    return Attack("pgd", float(epsilon), int(steps), size, True)


class Adversarial(NamedTuple):
    """What an attack found.

    Attributes:
      images: float32 (N, H, W, 3) the adversarial images, in [0, 1].
      clean: float32 (N, H, W, 3) the images attacked.
      attacked: int32 (N,) the class attacked (the clean prediction).
      predicted: int32 (N,) the prediction on the adversarial image.
      clean_margin, margin: float32 (N,) the quantity minimized, before and after:
        the attacked class's margin, or for a targeted attack the largest other
        logit minus the target's (negative: the target wins).
      attack: the settings used.
      target: the class a targeted attack pushes every image into (None: untargeted).
    """

    images: np.ndarray
    clean: np.ndarray
    attacked: np.ndarray
    predicted: np.ndarray
    clean_margin: np.ndarray
    margin: np.ndarray
    attack: Attack
    target: int | None = None

    @property
    def success(self) -> np.ndarray:
        """bool (N,): the prediction changed (untargeted), or became the target from
        another class (targeted; an image already predicted as the target does not
        count)."""
        if self.target is not None:
            return (self.predicted == self.target) & (self.attacked != self.target)
        return self.predicted != self.attacked

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success)) if len(self.success) else 0.0

    def summary(self) -> dict:
        """Strict-JSON numbers: the settings, the success rate and the margins."""
        a = self.attack
        return {
            "attack": a.name,
            "epsilon": a.epsilon,
            "steps": a.steps,
            "step_size": a.step_size,
            "target": self.target,
            "images": len(self.images),
            "success_rate": round(self.success_rate, 4),
            "median_clean_margin": round(float(np.median(self.clean_margin)), 4),
            "median_margin": round(float(np.median(self.margin)), 4),
        }

    def save(self, out_dir, *, class_names=None, shown: int = 8) -> Path:
        """Write ``results.json`` (the summary and each image's classes and margins)
        and ``examples.png`` (clean, adversarial and the perturbation, magnified, for the
        first ``shown`` images) into ``out_dir``; returns the folder."""
        from cnnvis_jax.report.files import write_json
        from cnnvis_jax.report.grid import save_png

        out = Path(out_dir)
        names = list(class_names) if class_names is not None else None

        def name(c: int):
            return names[c] if names is not None else int(c)

        per_image = [
            {"attacked": name(int(c)), "predicted": name(int(p)),
             "clean_margin": round(float(m0), 4), "margin": round(float(m), 4)}
            for c, p, m0, m in zip(self.attacked, self.predicted, self.clean_margin, self.margin)
        ]  # fmt: skip
        write_json(out / "results.json", {**self.summary(), "per_image": per_image})
        if len(self.images):
            k = min(shown, len(self.images))
            save_png(example_grid(self, range(k), names), out / "examples.png")
        return out


def perturbation_picture(result: Adversarial) -> np.ndarray:
    """float32 (N, H, W, 3): the perturbations magnified to fill [0, 1] (grey = 0,
    black/white = -epsilon/+epsilon)."""
    delta = (result.images - result.clean) / (2.0 * result.attack.epsilon)
    return np.clip(0.5 + delta, 0.0, 1.0).astype(np.float32)


def example_grid(
    result: Adversarial, indices, class_names=None, *, extra_rows=(), extra_labels=()
) -> np.ndarray:
    """A grid with one column per image of ``indices`` and three rows: the clean
    image (its class), the adversarial one (the new class) and the perturbation; then
    ``extra_rows`` (arrays (len(indices), H, W, 3) in [0, 1]) with ``extra_labels``
    (one per tile)."""
    from cnnvis_jax.report.grid import image_grid

    idx = np.asarray(list(indices), int)

    def name(c):
        return class_names[int(c)] if class_names is not None else str(int(c))

    tiles = np.concatenate([result.clean[idx], result.images[idx],
                            perturbation_picture(result)[idx], *extra_rows])  # fmt: skip
    labels = ([f"clean: {name(c)}" for c in result.attacked[idx]]
              + [f"{result.attack.name}: {name(c)}" for c in result.predicted[idx]]
              + [f"x{0.5 / result.attack.epsilon:.0f} perturbation"] * len(idx)
              + list(extra_labels))  # fmt: skip
    scale = max(1, 128 // result.images.shape[1])  # room for the labels under small images
    return image_grid(tiles, ncols=len(idx), labels=labels, scale=scale)


def margins(logits: jax.Array, classes: jax.Array) -> jax.Array:
    """float (N,): ``logits[n, classes[n]]`` minus the largest other logit."""
    own = jnp.take_along_axis(logits, classes[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(classes, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return own - others.max(axis=1)


def _logits(model: Model, images: jax.Array) -> jax.Array:
    return model.apply(model.params, images, (model.logits_layer,))[model.logits_layer]


@functools.partial(jax.jit, static_argnames=("steps", "random_start", "targeted"))
def _attack_batch(model, clean, key, epsilon, step_size, target, *, steps, random_start,
                  targeted):  # fmt: skip
    """(images, attacked, predicted, clean margin, margin) for one batch."""
    attacked = jnp.argmax(_logits(model, clean), axis=1)
    goal = jnp.full_like(attacked, target)

    def margin_of(x):
        if targeted:  # the largest other logit minus the target's
            return -margins(_logits(model, x), goal)
        return margins(_logits(model, x), attacked)

    def project(x):
        return jnp.clip(jnp.clip(x, clean - epsilon, clean + epsilon), 0.0, 1.0)

    rule = sign_descent(step_size)
    noise = jax.random.uniform(key, clean.shape, clean.dtype, -1.0, 1.0) * epsilon
    start = project(clean + noise) if random_start else clean
    clean_margin = margin_of(clean)

    def energy(x, i):  # images are independent lanes: one gradient per image
        margin = margin_of(x)
        return margin, {"score": margin, "keep": x}

    def update(grad, state, x, i):
        moves, state = rule.update(grad, state, x)
        return project(optax.apply_updates(x, moves)), state

    state = engine.start(start, rule.init(start), best=start,
                         best_score=jnp.full(attacked.shape, jnp.inf))  # fmt: skip
    state, _ = engine.scan(engine.Problem(energy, update), state, jnp.arange(steps))
    final = margin_of(state.params)
    better = final < state.best_score
    best = jnp.where(better[:, None, None, None], state.params, state.best)
    best_margin = jnp.where(better, final, state.best_score)
    predicted = jnp.argmax(_logits(model, best), axis=1)
    return best, attacked, predicted, clean_margin, best_margin


def attack(
    model: Model,
    images01,
    settings: Attack,
    *,
    key: jax.Array,
    batch_size: int = 64,
    target: int | str | None = None,
) -> Adversarial:
    """Run ``settings`` on every image (see the module docstring).

    Args:
      model: a classifier (``model.logits_layer`` set).
      images01: float (N, H, W, 3) in [0, 1] at the model's input size.
      settings: :func:`fgsm` or :func:`pgd` (or any :class:`Attack`).
      key: PRNG key of PGD's random start (the ``b``-th batch of ``batch_size``
        images uses ``fold_in(key, b)``).
      batch_size: images per compiled call.
      target: a class (index or name) to push every image into (a targeted attack:
        minimize the largest other logit minus the target's); None attacks each
        image's own prediction.

    Returns:
      An :class:`Adversarial` with one row per image.

    Raises:
      InputError: a model without a classifier; images that are not float NHWC at
        the model's size; a target class out of range or unknown.
    """
    if model.logits_layer is None or model.class_names is None:
        raise InputError(
            f"model {model.name!r} has no classifier; adversarial examples attack a "
            "class decision, so choose a classifier."
        )
    target = target_index(model, target)
    images01 = np.asarray(images01, np.float32)
    check_images(images01, model.input)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    parts = []
    for b, start in enumerate(range(0, len(images01), batch_size)):
        batch = jnp.asarray(images01[start : start + batch_size])
        out = _attack_batch(
            model,
            batch,
            jax.random.fold_in(key, b),
            jnp.float32(settings.epsilon),
            jnp.float32(settings.step_size),
            jnp.int32(0 if target is None else target),
            steps=settings.steps,
            random_start=settings.random_start,
            targeted=target is not None,
        )
        parts.append([np.asarray(a) for a in out])
    images, attacked, predicted, clean_margin, margin = (
        np.concatenate([p[i] for p in parts]) for i in range(5)
    )
    return Adversarial(
        images.astype(np.float32),
        images01,
        attacked.astype(np.int32),
        predicted.astype(np.int32),
        clean_margin.astype(np.float32),
        margin.astype(np.float32),
        settings,
        target,
    )


def target_index(model: Model, target: int | str | None) -> int | None:
    """The target class as an index (a name is looked up in the model's classes)."""
    if target is None:
        return None
    names = list(model.class_names)
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in names:
            raise InputError(
                f"unknown target class {target!r}; model {model.name!r} has classes "
                f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}."
            )
        return names.index(target)
    model.check_class(int(target))
    return int(target)
