"""Run as a script: the `lpips` package's LPIPS (net "vgg", v0.1, its bundled linear weights)
on a torchvision VGG16 with random weights, and its distances and spatial maps for random and
photo image pairs, and its gradients with respect to the first images of GRADIENT_PAIRS in
float32 and float64, saved in OUT.npz with that VGG16's state dict. A process of its own:
importing PyTorch into a process that has loaded TensorFlow can crash it.

    python tests/lpips_reference.py OUT.npz
"""

import io
import sys

import lpips
import numpy as np
import torch
import torchvision
from PIL import Image, ImageFilter
from skimage import data as photos

SIZE = (100, 150)  # H, W: not multiples of 16, so every pooling rounds down
# Which pairs the gradients are taken of: a random pair, the shifted and the noisy astronaut.
GRADIENT_PAIRS = [0, 2, 3]


def with_backbone(model: lpips.LPIPS, vgg: torch.nn.Module) -> lpips.LPIPS:
    """LPIPS's trunk slices hold torchvision's features.N modules under their index N."""
    for piece in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4,
                  model.net.slice5):  # fmt: skip
        for index, module in piece.named_children():
            module.load_state_dict(vgg.features[int(index)].state_dict())
    return model.eval()


def photo_pairs(size=SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Photos in [0, 1] against themselves shifted, noised, blurred and JPEG-compressed."""
    rng = np.random.default_rng(0)
    originals, altered = [], []
    for photo in (photos.astronaut(), photos.chelsea(), photos.coffee()):
        image = Image.fromarray(photo).resize(size[::-1], Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=20)
        compressed = np.asarray(Image.open(buffer).convert("RGB"))
        blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)))
        image = np.asarray(image, np.uint8)
        noisy = np.clip(image + rng.normal(0, 20, image.shape), 0, 255)
        for other in (np.roll(image, 3, axis=1), noisy, blurred, compressed):
            originals.append(image)
            altered.append(other)
    scale = lambda x: np.asarray(x, np.float32) / 255  # noqa: E731
    return scale(originals), scale(altered)


def gradients(model: torch.nn.Module, images0, images1, **options) -> dict:
    """d sum(model(x, y)) / dx of NHWC pairs, with the model in float32 and in float64."""
    found = {}
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        model = model.to(dtype)
        x = nchw(images0).to(dtype).requires_grad_(True)
        model(x, nchw(images1).to(dtype), **options).sum().backward()
        found[name] = x.grad.permute(0, 2, 3, 1).double().numpy()
    model.float()
    return found


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def main(out: str) -> None:
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    rng = np.random.default_rng(1)
    random0 = rng.uniform(-1, 1, (2, *SIZE, 3)).astype(np.float32)
    random1 = rng.uniform(-1, 1, (2, *SIZE, 3)).astype(np.float32)
    photos0, photos1 = (2 * x - 1 for x in photo_pairs())
    images0, images1 = np.concatenate([random0, photos0]), np.concatenate([random1, photos1])
    results, models = {}, {}
    for spatial in (False, True):
        models[spatial] = model = with_backbone(
            lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, spatial=spatial, verbose=False),
            vgg,
        )
        with torch.no_grad():
            results[spatial] = model(nchw(images0), nchw(images1)).numpy()
    pairs = images0[GRADIENT_PAIRS], images1[GRADIENT_PAIRS]
    grads = {f"gradient_{k}": v for k, v in gradients(models[False], *pairs).items()}
    state = {f"state/{k}": v.numpy() for k, v in vgg.state_dict().items()}
    np.savez(
        out, images0=images0, images1=images1, distances=results[False].reshape(-1),
        maps=results[True][:, 0], gradient_pairs=GRADIENT_PAIRS, **grads, **state,
    )  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
