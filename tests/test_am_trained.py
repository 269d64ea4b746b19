"""On a trained ConceptNet, rendered units beat their mean validation activation.

All 6 layers x 16 units (fc8: its 12 classes) are one vmapped render: each job's
objective is the same sum of per-layer terms with one-hot weights (units and
weights are data), so one compiled program serves every layer. A unit is the
neuron at the centre of its map (Yosinski et al.'s choice). Conv units
maximize their value before the ReLU (``convN_pre``, which has a gradient even
while the unit is silent) plus the one after it; the check is on the value after
the ReLU against its mean over validation images.
"""

import jax.numpy as jnp
import numpy as np

from cnnvis_jax import am
from cnnvis_jax.data import ConceptSet
from cnnvis_jax.features import extract_features

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc8")
STEPS = 16


def _centre(_, a):
    """The unit at the centre of the map (Yosinski's neuron), or the fc value."""
    return a[:, a.shape[1] // 2, a.shape[2] // 2] if a.ndim == 4 else a


def test_units_of_every_layer_beat_their_validation_mean(trained_conceptnet):
    model = trained_conceptnet
    targets = [f"{name}_pre" if name.startswith("conv") else name for name in LAYERS]
    jobs, objectives = [], []
    for li, name in enumerate(LAYERS):
        for unit in range(min(16, model.layer(name).channels)):
            terms = (
                [  # pre-ReLU value (a gradient even while silent) + the activation
                    am.neuron(t, unit if i == li else 0) * (1.0 if i == li else 0.0)
                    for i, t in enumerate(targets)
                ]
                + [
                    am.neuron(n, unit if i == li else 0) * (1.0 if i == li else 0.0)
                    for i, n in enumerate(LAYERS[:-1])
                ]
            )
            objectives.append(sum(terms))
            jobs.append((name, unit))
    # pixels in [0, 1] moved by Adam (Lucid's optimizer and rate) and clipped: a few
    # steps suffice on a briefly trained net, whose units respond weakly
    recipe = am.Recipe(
        name="adam-pixels",
        steps=STEPS,
        param=am.Pixel("unit", None, 10.0),
        optimizer=am.Adam(0.05),
        post=(am.ClipParams(),),
    )
    result = am.render(model, objectives, recipe, key=0, steps=STEPS)
    assert np.all(result.stopped_at == -1)
    acts = model(jnp.asarray(result.images[:, 0]), LAYERS)
    val = ConceptSet(256, split="val")
    stats = extract_features(model, val, LAYERS, batch_size=128, progress=False,
                             reduce=_centre)  # fmt: skip
    ratios, silent = {}, []
    for k, (name, unit) in enumerate(jobs):
        final = float(_centre(None, acts[name])[k, unit])
        mean = float(stats[name][:, unit].mean())
        std = float(stats[name][:, unit].std())
        ratios.setdefault(name, []).append(final / max(mean, 1e-6))
        if name == "fc8":  # logits can be negative: a margin in standard deviations
            assert final > mean + 3 * std, (name, unit, final, mean, std)
        elif mean > 0:
            assert final > 1.5 * mean and final > 0.05, (name, unit, final, mean)
        else:  # silent on every validation image: the objective must still have climbed
            assert result.final_activation[k, 0] > result.start_activation[k, 0] + 1.0
            silent.append((name, unit))
    print({name: round(float(np.min(r)), 2) for name, r in ratios.items()}, silent)
