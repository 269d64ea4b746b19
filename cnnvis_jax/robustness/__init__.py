"""Robustness: adversarial examples (FGSM, PGD) and what the network sees in them.

* :func:`attack` with :func:`fgsm` or :func:`pgd` settings: the adversarial images of a
  batch, found by minimizing the class margin in an L-inf ball (:class:`Adversarial`,
  with ``.summary()`` and ``.save(out_dir)``).
* :func:`example_grid`: clean image, adversarial image and magnified perturbation.
"""

from cnnvis_jax.robustness.adversarial import (
    Adversarial,
    Attack,
    attack,
    example_grid,
    fgsm,
    margins,
    pgd,
)

__all__ = ["Adversarial", "Attack", "attack", "example_grid", "fgsm", "margins", "pgd"]
