"""Network inversion: regularized (Mahendran & Vedaldi) and UpconvNet decoders
(Dosovitskiy & Brox), with feature perturbations and reconstruction metrics.

Regularized inversion::

    from cnnvis_jax.inversion import invert_images
    results = invert_images(model, images01, ["conv3", "fc6"], preset="mahendran2016",
                            key=jax.random.key(0))
    results["fc6"].best()  # (images (N, H, W, 3), feature errors (N,))

Learned inversion::

    decoder = train_decoder(model, DecoderConfig(layer="fc6"), "runs/fc6")
    decoder = load_decoder("runs/fc6")        # .apply(params, features) -> [0, 1] NHWC
    images = reconstruct(model, decoder, images01, transform=make_perturbation("binarize"))

Measured and saved (either method)::

    done = reconstruction(model, "fc6", images01, images, method="upconv")
    done.save("out/")   # PNGs, reconstructions.png, results.json; done.summary()
"""

from cnnvis_jax.inversion.cache import cached_decoder
from cnnvis_jax.inversion.decoder import Decoder, DecoderDesign, design
from cnnvis_jax.inversion.io import check_decoder, fingerprint, load_decoder, save_decoder
from cnnvis_jax.inversion.masks import central_neighbourhood, channel_group, full_mask
from cnnvis_jax.inversion.metrics import (
    normalized_error,
    normalized_feature_error,
    normalized_image_error,
)
from cnnvis_jax.inversion.perturb import (
    PERTURBATIONS,
    binarize,
    drop_least,
    dropout,
    make_perturbation,
    unit_importance,
)
from cnnvis_jax.inversion.presets import (
    PRESETS,
    Mahendran2015,
    Mahendran2016,
    Plan,
    Stage,
    preset,
)
from cnnvis_jax.inversion.reconstruction import Reconstruction, reconstruction
from cnnvis_jax.inversion.regularized import (
    InversionResult,
    features_of,
    invert,
    invert_images,
    invert_layers,
    resolve_plan,
)
from cnnvis_jax.inversion.train import DecoderConfig, train_decoder
from cnnvis_jax.inversion.upconv import decode, reconstruct
from cnnvis_jax.preimage.updates import adagrad_momentum, momentum_with_resets

__all__ = [
    "PERTURBATIONS",
    "PRESETS",
    "Decoder",
    "DecoderConfig",
    "DecoderDesign",
    "InversionResult",
    "Mahendran2015",
    "Mahendran2016",
    "Plan",
    "Reconstruction",
    "Stage",
    "adagrad_momentum",
    "binarize",
    "cached_decoder",
    "central_neighbourhood",
    "channel_group",
    "check_decoder",
    "decode",
    "design",
    "drop_least",
    "dropout",
    "features_of",
    "fingerprint",
    "full_mask",
    "preset",
    "invert",
    "invert_images",
    "invert_layers",
    "load_decoder",
    "make_perturbation",
    "momentum_with_resets",
    "normalized_error",
    "normalized_feature_error",
    "normalized_image_error",
    "reconstruct",
    "reconstruction",
    "resolve_plan",
    "save_decoder",
    "train_decoder",
    "unit_importance",
]
