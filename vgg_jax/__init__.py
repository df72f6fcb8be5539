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

Subpackages, each importing only those before it: model, data, weights, training, evaluation,
cli. `import vgg_jax` imports neither jax nor TensorFlow: each name above loads its module on
first use, and `vgg_jax.inference` (vgg_jax.evaluation.inference: classifiers from checkpoints
or weights, with TensorFlow) too.
The base install (`pip install vgg_jax`) runs the model, the weights and LPIPS; training, the
input pipeline and evaluation on data sets need the `train` extra.

Commands: `python train.py`, `python -m vgg_jax.cli.evaluate` (the paper's test protocols),
`python -m vgg_jax.cli.predict` (classify image files), `python -m vgg_jax` (a layer table).
"""

import importlib
import pkgutil
from typing import TYPE_CHECKING

from vgg_jax._submodules import submodule_loader
from vgg_jax.environment import (
    check_requirements,
    quiet_libtpu_without_tpu,
    turn_off_ynn_fusions,
)

# Before jax is imported: an older jax or flax than vgg_jax needs would fail later, naming neither.
check_requirements()
quiet_libtpu_without_tpu()
turn_off_ynn_fusions()

# Each public name and the module it lives in, imported on first use (PEP 562), so that the
# commands answer --help and argument errors before jax (a second) is imported.
_SOURCES = {
    "vgg_jax.data.labels": ("imagenet_class_names",),
    "vgg_jax.dists": ("DISTS", "load_dists"),
    "vgg_jax.evaluation.protocols": (
        "PROTOCOLS", "center_posteriors", "dense_posteriors", "multi_crop_posteriors",
        "protocol_posteriors",
    ),
    "vgg_jax.model.architectures": (
        "CONFIGS", "MODEL_NAMES", "LayerSpec", "downsampling_factor", "feature_names",
        "layer_specs",
    ),
    "vgg_jax.model.costs": ("count_params", "layer_table"),
    "vgg_jax.model.initializers": ("INIT_SCHEMES",),
    "vgg_jax.model.layers": ("local_response_norm",),
    "vgg_jax.model.nnx_bridge": ("to_nnx",),
    "vgg_jax.model.vgg": (
        "VGG", "create_model", "vgg11", "vgg11_bn", "vgg11_lrn", "vgg13", "vgg13_bn", "vgg16",
        "vgg16_1x1", "vgg16_bn", "vgg19", "vgg19_bn",
    ),
    "vgg_jax.perceptual": (
        "LPIPS", "content_loss", "feature_loss", "gram_matrix", "load_lpips", "perceptual_loss",
        "style_loss",
    ),
    "vgg_jax.weights.pretrained": (
        "PRETRAINED_WEIGHTS", "export_torch_state_dict", "load_pretrained", "save_safetensors",
    ),
}  # fmt: skip
_RENAMED = {"PRETRAINED_WEIGHTS": "WEIGHTS"}  # public name -> name in its module
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}
_load_submodule = submodule_loader(__name__)
# Short names for submodules that live on a lower floor.
_SUBMODULE_ALIASES = {"inference": "vgg_jax.evaluation.inference"}

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
    "to_nnx",
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


if TYPE_CHECKING:  # what static readers (the API reference's griffe, IDEs) follow
    from vgg_jax.data.labels import (
        imagenet_class_names,
    )
    from vgg_jax.dists import (
        DISTS,
        load_dists,
    )
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
    from vgg_jax.model.costs import (
        count_params,
        layer_table,
    )
    from vgg_jax.model.initializers import (
        INIT_SCHEMES,
    )
    from vgg_jax.model.layers import (
        local_response_norm,
    )
    from vgg_jax.model.nnx_bridge import (
        to_nnx,
    )
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


def __getattr__(name: str):
    if name in _SUBMODULE_ALIASES:
        return importlib.import_module(_SUBMODULE_ALIASES[name])
    if name not in _MODULE_OF:  # a submodule (vgg_jax.evaluation, vgg_jax.weights, ...)
        return _load_submodule(name)
    value = getattr(importlib.import_module(_MODULE_OF[name]), _RENAMED.get(name, name))
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(
        {
            *globals(),
            *__all__,
            *_SUBMODULE_ALIASES,
            *(module.name for module in pkgutil.iter_modules(__path__)),
        }
    )
