"""Run as a script: torchvision VGGs with random weights, their state dicts and their logits
on fixed random images, saved as NAME.npz in a folder; and, in weights.json, what torchvision
publishes about each VGG's IMAGENET1K_V1 weights (URL, accuracies, mean and std), read from
torchvision itself, offline. A process of its own, because importing PyTorch into a process
that has loaded TensorFlow can crash it.

    python tests/torchvision_reference.py OUT_DIR vgg11 vgg16_bn ...
"""

import json
import pathlib
import sys

import numpy as np
import torch
import torchvision

PTH_MODEL = "vgg11_bn"  # saved as a .pth too, for predict --weights
GREY = 128  # the uint8 value of every pixel of the image predict is checked on


def main(name: str, out: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    if name.endswith("_bn"):  # non-trivial running statistics, so BN conversion is tested
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    if name == PTH_MODEL:  # class scores far apart, so its top classes are not near-ties
        with torch.no_grad():
            model.classifier[-1].weight.mul_(100)
    images = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    arrays = {f"state/{k}": v.numpy() for k, v in model.state_dict().items()}
    np.savez(out, images=images, logits=logits, **arrays)
    if name == PTH_MODEL:  # the .pth itself, and its probabilities for a grey 224x224 image
        torch.save(model.state_dict(), pathlib.Path(out).with_suffix(".pth"))
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        grey = ((torch.full((224, 224, 3), GREY / 255) - mean) / std).permute(2, 0, 1)[None]
        with torch.no_grad():
            probabilities = torch.softmax(model(grey), dim=-1)[0].numpy()
        np.save(pathlib.Path(out).with_suffix(".grey.npy"), probabilities)


def published_weights() -> dict:
    published = {}
    names = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
    for name in names:
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        metrics = weights.meta["_metrics"]["ImageNet-1K"]
        transforms = weights.transforms()
        published[name] = {
            "url": weights.url, "top1": metrics["acc@1"], "top5": metrics["acc@5"],
            "mean": list(transforms.mean), "std": list(transforms.std),
            "crop": transforms.crop_size[0], "resize": transforms.resize_size[0],
            "categories": weights.meta["categories"],
        }  # fmt: skip
    return published


if __name__ == "__main__":
    out_dir = pathlib.Path(sys.argv[1])
    (out_dir / "weights.json").write_text(json.dumps(published_weights(), indent=2))
    for model_name in sys.argv[2:]:
        main(model_name, str(out_dir / f"{model_name}.npz"))
