"""vgg_jax: VGGNet (Simonyan & Zisserman, 2014) in JAX/Flax, every configuration of the paper.

import jax, vgg_jax
model = vgg_jax.vgg16(num_classes=10)
variables = model.init(jax.random.key(0), images)          # images: (N, 224, 224, 3)
logits = model.apply(variables, images)                     # classic head
logits = model.apply(variables, bigger_images, dense=True)  # dense-evaluation head
feats = model.apply(variables, images, layers=["conv3_3", "pool5"], method="extract_features")
model, variables, preprocess = vgg_jax.load_pretrained("vgg16.tv_in1k")   # ImageNet weights
posteriors = vgg_jax.dense_posteriors(model, variables, preprocess(uint8_images))  # Section 3.2
lpips, variables = vgg_jax.load_lpips()             # LPIPS distance (vgg_jax.perceptual)
distances = lpips.apply(variables, images0, images1)        # NHWC in [-1, 1] -> (N,)
dists, variables = vgg_jax.load_dists()             # DISTS distance (vgg_jax.dists)
distances = dists.apply(variables, images0, images1)        # NHWC in [0, 1] -> (N,)

Subpackages, each importing only those before it: model, data, weights, training, evaluation.
`vgg_jax.inference` (classifiers from checkpoints or weights) loads on first use, since it
brings TensorFlow.

Commands: `python train.py`, `python -m vgg_jax.evaluate` (the paper's test protocols),
`python -m vgg_jax.predict` (classify image files), `python -m vgg_jax` (a layer table).
"""

from vgg_jax.environment import check_requirements

# Before jax is imported: an older jax or flax than vgg_jax needs would fail later, naming neither.
check_requirements()

from vgg_jax.data.labels import imagenet_class_names
from vgg_jax.dists import DISTS, load_dists
from vgg_jax.evaluation.protocols import (
    PROTOCOLS,
    center_posteriors,
    dense_posteriors,
    multi_crop_posteriors,
    protocol_posteriors,
)
from vgg_jax.model.architectures import (
    CONFIGS,
    MODEL_NAMES,
    LayerSpec,
    downsampling_factor,
    feature_names,
    layer_specs,
)
from vgg_jax.model.costs import count_params, layer_table
from vgg_jax.model.initializers import INIT_SCHEMES
from vgg_jax.model.layers import local_response_norm
from vgg_jax.model.vgg import (
    VGG,
    create_model,
    vgg11,
    vgg11_bn,
    vgg11_lrn,
    vgg13,
    vgg13_bn,
    vgg16,
    vgg16_1x1,
    vgg16_bn,
    vgg19,
    vgg19_bn,
)
from vgg_jax.perceptual import (
    LPIPS,
    content_loss,
    feature_loss,
    gram_matrix,
    load_lpips,
    perceptual_loss,
    style_loss,
)
from vgg_jax.weights.pretrained import (
    WEIGHTS as PRETRAINED_WEIGHTS,
)
from vgg_jax.weights.pretrained import (
    export_torch_state_dict,
    load_pretrained,
    save_safetensors,
)

__all__ = [
    "CONFIGS",
    "DISTS",
    "INIT_SCHEMES",
    "LPIPS",
    "MODEL_NAMES",
    "PRETRAINED_WEIGHTS",
    "PROTOCOLS",
    "VGG",
    "LayerSpec",
    "center_posteriors",
    "content_loss",
    "count_params",
    "create_model",
    "dense_posteriors",
    "downsampling_factor",
    "export_torch_state_dict",
    "feature_loss",
    "feature_names",
    "gram_matrix",
    "imagenet_class_names",
    "layer_specs",
    "layer_table",
    "load_dists",
    "load_lpips",
    "load_pretrained",
    "local_response_norm",
    "multi_crop_posteriors",
    "perceptual_loss",
    "protocol_posteriors",
    "save_safetensors",
    "style_loss",
    "vgg11",
    "vgg11_bn",
    "vgg11_lrn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_1x1",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]


def __getattr__(name: str):
    # vgg_jax.inference, as the README writes it, without importing TensorFlow on `import vgg_jax`.
    if name == "inference":
        import importlib

        return importlib.import_module("vgg_jax.inference")
    raise AttributeError(f"module 'vgg_jax' has no attribute {name!r}")
