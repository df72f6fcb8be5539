"""Run as a script: torchvision VGGs with random weights, their state dicts and their logits
on fixed random images, saved as NAME.npz in a folder. A process of its own, because importing
PyTorch into a process that has loaded TensorFlow can crash it.

    python tests/torchvision_reference.py OUT_DIR vgg11 vgg16_bn ...
"""

import pathlib
import sys

import numpy as np
import torch
import torchvision


def main(name: str, out: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    if name.endswith("_bn"):  # non-trivial running statistics, so BN conversion is tested
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    images = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    arrays = {f"state/{k}": v.numpy() for k, v in model.state_dict().items()}
    np.savez(out, images=images, logits=logits, **arrays)


if __name__ == "__main__":
    for model_name in sys.argv[2:]:
        main(model_name, str(pathlib.Path(sys.argv[1]) / f"{model_name}.npz"))
