"""Run as a script: the `lpips` package's LPIPS (net "vgg", v0.1, its bundled linear weights)
on a torchvision VGG16 with random weights, and its distances and spatial maps for random and
photo image pairs, saved in OUT.npz with that VGG16's state dict. A process of its own:
importing PyTorch into a process that has loaded TensorFlow can crash it.

    python tests/lpips_reference.py OUT.npz
"""

import io
import sys

import lpips
import numpy as np
import torch
import torchvision
from PIL import Image
from skimage import data as photos

SIZE = (100, 150)  # H, W: not multiples of 16, so every pooling rounds down


def with_backbone(model: lpips.LPIPS, vgg: torch.nn.Module) -> lpips.LPIPS:
    """LPIPS's trunk slices hold torchvision's features.N modules under their index N."""
    for piece in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4,
                  model.net.slice5):  # fmt: skip
        for index, module in piece.named_children():
            module.load_state_dict(vgg.features[int(index)].state_dict())
    return model.eval()


def photo_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Photos in [-1, 1] against themselves shifted, noised and JPEG-compressed."""
    rng = np.random.default_rng(0)
    originals, altered = [], []
    for photo in (photos.astronaut(), photos.chelsea(), photos.coffee()):
        image = np.asarray(Image.fromarray(photo).resize(SIZE[::-1], Image.BILINEAR), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=20)
        compressed = np.asarray(Image.open(buffer).convert("RGB"))
        noisy = np.clip(image + rng.normal(0, 20, image.shape), 0, 255)
        for other in (np.roll(image, 3, axis=1), noisy, compressed):
            originals.append(image)
            altered.append(other)
    scale = lambda x: np.asarray(x, np.float32) / 127.5 - 1  # noqa: E731
    return scale(originals), scale(altered)


def main(out: str) -> None:
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    rng = np.random.default_rng(1)
    random0 = rng.uniform(-1, 1, (2, *SIZE, 3)).astype(np.float32)
    random1 = rng.uniform(-1, 1, (2, *SIZE, 3)).astype(np.float32)
    photos0, photos1 = photo_pairs()
    images0, images1 = np.concatenate([random0, photos0]), np.concatenate([random1, photos1])
    nchw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)  # noqa: E731
    results = {}
    for spatial in (False, True):
        model = with_backbone(
            lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, spatial=spatial, verbose=False),
            vgg,
        )
        with torch.no_grad():
            results[spatial] = model(nchw(images0), nchw(images1)).numpy()
    state = {f"state/{k}": v.numpy() for k, v in vgg.state_dict().items()}
    np.savez(
        out, images0=images0, images1=images1, distances=results[False].reshape(-1),
        maps=results[True][:, 0], **state,
    )  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
