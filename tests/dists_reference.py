"""Run as a script: the `DISTS-pytorch` package's DISTS (its bundled alpha and beta) on a
torchvision VGG16 with random weights, its distances for random pairs at RANDOM_SIZE and photo
pairs (lpips_reference.photo_pairs) at PHOTO_SIZE, and its gradients with respect to the first
images of GRADIENT_PAIRS in float32 and float64, saved in OUT.npz with that VGG16's state dict.
A process of its own, as lpips_reference.py.

    python tests/dists_reference.py OUT.npz
"""

import sys

import DISTS_pytorch.DISTS_pt as reference
import numpy as np
import torch
import torchvision
from lpips_reference import gradients, nchw, photo_pairs

PHOTO_SIZE = (70, 110)  # neither a multiple of 32: L2 pooling rounds 35 up to 18, 55 to 28
RANDOM_SIZE = (67, 83)
GRADIENT_PAIRS = [0, 1, 2]  # of the photos: the astronaut shifted, noised, blurred


def main(out: str) -> None:
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    # DISTS_pt builds models.vgg16(pretrained=True) (a download); the same network, random.
    reference.models = type("Models", (), {"vgg16": staticmethod(lambda **kwargs: vgg)})
    model = reference.DISTS().eval()  # alpha and beta: the package's weights.pt
    rng = np.random.default_rng(1)
    random0, random1 = (rng.uniform(0, 1, (2, *RANDOM_SIZE, 3)).astype(np.float32) for _ in "ab")
    photos0, photos1 = photo_pairs(PHOTO_SIZE)
    distances = {}
    with torch.no_grad():  # float32, and float64: what the formula gives without rounding
        for dtype in (torch.float32, torch.float64):
            model = model.to(dtype)
            for name, (x, y) in {"random": (random0, random1), "photo": (photos0, photos1)}.items():
                distance = model(nchw(x).to(dtype), nchw(y).to(dtype)).double().numpy()
                distances[f"{name}_distances_{str(dtype)[6:]}"] = distance
    model = model.float()
    pairs = photos0[GRADIENT_PAIRS], photos1[GRADIENT_PAIRS]
    found = gradients(model, *pairs, require_grad=True)  # without it, DISTS_pt's no_grad
    grads = {f"gradient_{k}": v for k, v in found.items()}
    state = {f"state/{k}": v.numpy() for k, v in vgg.state_dict().items()}
    np.savez(
        out, random0=random0, random1=random1, photos0=photos0, photos1=photos1, **distances,
        gradient_pairs=GRADIENT_PAIRS, **grads, **state,
    )  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
