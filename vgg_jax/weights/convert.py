"""Published VGG weights as vgg_jax variables, and back.

Three layouts: torchvision's state dicts (`.pth`, or `.safetensors` with the same keys), timm's
(the same convolutions, FC6/FC7 stored as 7x7/1x1 convolutions `pre_logits.fc1/fc2`, FC8 as
`head.fc`) and the Keras files of the paper's own Caffe weights (h5). Layers line up through the
configuration table, not through parameter order: torchvision's `features` Sequential holds, for
each conv of the table, a Conv2d, a BatchNorm2d in the _bn models, and a ReLU, and a MaxPool2d
for each pool; its `classifier` holds FC6, FC7 and FC8 at indices 0, 3 and 6.
"""

from __future__ import annotations

import numpy as np

from vgg_jax.model.architectures import layer_specs

TORCH_CLASSIFIER = {"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}
TIMM_HEAD = {"fc6": "pre_logits.fc1", "fc7": "pre_logits.fc2", "fc8": "head.fc"}
TORCH_BN = {"scale": "weight", "bias": "bias"}
TORCH_BN_STATS = {"mean": "running_mean", "var": "running_var"}


class ConversionError(ValueError):
    """Weights that do not fit the architecture they are loaded into."""


def torchvision_layer_keys(config: str, batch_norm: bool) -> dict[str, str]:
    """vgg_jax layer name -> torchvision module ("conv1_1" -> "features.0"), from the table."""
    keys, index = {}, 0
    for spec in layer_specs(config):
        if spec.kind == "conv":
            keys[spec.name] = f"features.{index}"
            index += 1
            if batch_norm:
                keys[f"{spec.name}_bn"] = f"features.{index}"
                index += 1
            index += 1  # the ReLU
        elif spec.kind == "pool":
            index += 1
        else:
            raise ConversionError(
                f"Configuration {config!r} has a {spec.kind} layer ({spec.name}), which "
                f"torchvision's VGG has no place for."
            )
    return keys | TORCH_CLASSIFIER


def _take(arrays: dict, key: str, layer: str, used: set) -> np.ndarray:
    if key not in arrays:
        raise ConversionError(
            f"The weights have no tensor {key!r}, which vgg_jax's {layer} needs: they are of "
            f"another architecture (e.g. VGG19 weights for VGG16, or batch norm or not)."
        )
    used.add(key)
    return np.asarray(arrays[key])


def _expect(array: np.ndarray, shape: tuple, key: str) -> np.ndarray:
    if array.shape != tuple(shape):
        raise ConversionError(
            f"Tensor {key!r} has shape {array.shape}, expected {tuple(shape)}: the weights are "
            f"of another architecture or size."
        )
    return array


def from_torch(arrays: dict, config: str, batch_norm: bool) -> dict:
    """vgg_jax variables ({"params", "batch_stats"}) from a torchvision or timm state dict of
    NumPy arrays. Every tensor of the file must be used: a leftover one is an error too."""
    timm = "pre_logits.fc1.weight" in arrays
    keys = torchvision_layer_keys(config, batch_norm) | (TIMM_HEAD if timm else {})
    used: set[str] = set()
    params, batch_stats = {}, {}
    for layer, module in keys.items():
        if layer.endswith("_bn"):
            params[layer] = {
                ours: _take(arrays, f"{module}.{theirs}", layer, used)
                for ours, theirs in TORCH_BN.items()
            }
            batch_stats[layer] = {
                ours: _take(arrays, f"{module}.{theirs}", layer, used)
                for ours, theirs in TORCH_BN_STATS.items()
            }
            used.add(f"{module}.num_batches_tracked")
            continue
        weight = _take(arrays, f"{module}.weight", layer, used)
        bias = _take(arrays, f"{module}.bias", layer, used)
        # FC6 unflattens into the channels of the last conv (512, or fewer in narrow models).
        channels = params[_last_conv(config)]["kernel"].shape[-1] if layer == "fc6" else None
        kernel = _torch_kernel(layer, weight, f"{module}.weight", channels)
        params[layer] = {"kernel": kernel, "bias": bias}
    leftover = sorted(set(arrays) - used)
    if leftover:
        raise ConversionError(
            f"The weights hold tensors vgg_jax's {config} has no place for, first "
            f"{leftover[0]!r}: they are of another architecture (e.g. VGG19 weights for VGG16)."
        )
    return {"params": params, "batch_stats": batch_stats} if batch_norm else {"params": params}


def _last_conv(config: str) -> str:
    return [spec.name for spec in layer_specs(config) if spec.kind == "conv"][-1]


def _torch_kernel(layer: str, weight: np.ndarray, key: str, channels: int | None) -> np.ndarray:
    if layer == "fc6":
        if weight.ndim == 2:  # torchvision: flattened in PyTorch's C, H, W order
            out, flat = weight.shape
            side = int(round((flat / channels) ** 0.5))
            if channels * side * side != flat:
                raise ConversionError(
                    f"Tensor {key!r} has shape {weight.shape}: not an FC6 over a square map of "
                    f"{channels} channels."
                )
            weight = weight.reshape(out, channels, side, side)
        return weight.transpose(2, 3, 1, 0)  # (out, C, H, W) -> (H, W, C, out)
    if layer in ("fc7", "fc8"):
        return weight.reshape(weight.shape[0], -1).T  # timm's 1x1 conv or a Linear
    if weight.ndim != 4:
        raise ConversionError(f"Tensor {key!r} has shape {weight.shape}; a conv kernel has 4 axes.")
    return weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def to_torch(variables: dict, config: str, batch_norm: bool) -> dict[str, np.ndarray]:
    """A torchvision state dict (NumPy arrays, float32) of vgg_jax variables: FC6 flattened
    back into PyTorch's C, H, W order."""
    params = variables["params"]
    state = {}
    for layer, module in torchvision_layer_keys(config, batch_norm).items():
        if layer.endswith("_bn"):
            for ours, theirs in TORCH_BN.items():
                state[f"{module}.{theirs}"] = np.asarray(params[layer][ours])
            for ours, theirs in TORCH_BN_STATS.items():
                state[f"{module}.{theirs}"] = np.asarray(variables["batch_stats"][layer][ours])
            state[f"{module}.num_batches_tracked"] = np.zeros((), np.int64)
            continue
        kernel = np.asarray(params[layer]["kernel"])
        if layer == "fc6":
            weight = kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[-1], -1)
        elif layer in ("fc7", "fc8"):
            weight = kernel.T
        else:
            weight = kernel.transpose(3, 2, 0, 1)
        state[f"{module}.weight"] = np.ascontiguousarray(weight)
        state[f"{module}.bias"] = np.asarray(params[layer]["bias"])
    return state


def keras_layer_names(config: str) -> dict[str, str]:
    """vgg_jax layer name -> Keras layer name ("conv3_2" -> "block3_conv2")."""
    names = {}
    for spec in layer_specs(config):
        if spec.kind == "conv":
            block, position = spec.name.removeprefix("conv").split("_")
            names[spec.name] = f"block{block}_conv{position}"
    return names | {"fc6": "fc1", "fc7": "fc2", "fc8": "predictions"}


def from_keras(layers: dict[str, list[np.ndarray]], config: str) -> dict:
    """vgg_jax variables from Keras VGG16/VGG19 weights ({layer name: [kernel, bias]}).

    The Caffe weights take BGR input: conv1_1's input channels are reversed here so that the
    model takes RGB like every other vgg_jax model (minus the Caffe mean, see pretrained.py).
    """
    params = {}
    for ours, theirs in keras_layer_names(config).items():
        if theirs not in layers:
            raise ConversionError(
                f"The Keras weights have no layer {theirs!r}, which vgg_jax's {ours} needs: "
                f"they are of another architecture."
            )
        kernel, bias = (np.asarray(a) for a in layers[theirs])
        if ours == "fc6":  # Keras flattens NHWC maps in H, W, C order, as vgg_jax does
            channels = params[_last_conv(config)]["kernel"].shape[-1]
            side = int(round((kernel.shape[0] / channels) ** 0.5))
            shape = (channels * side * side, kernel.shape[1])
            kernel = _expect(kernel, shape, f"{theirs}/kernel").reshape(side, side, channels, -1)
        if ours == "conv1_1":
            kernel = kernel[:, :, ::-1, :]
        params[ours] = {"kernel": np.ascontiguousarray(kernel), "bias": bias}
    leftover = sorted(set(layers) - set(keras_layer_names(config).values()))
    if leftover:
        raise ConversionError(
            f"The Keras weights hold layer {leftover[0]!r}, which vgg_jax's {config} has no "
            f"place for: they are of another architecture (e.g. VGG19 weights for VGG16)."
        )
    return {"params": params}
