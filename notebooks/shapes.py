"""The tutorials' data and model, in one small file that notebooks 2-4 and the app share.

- `make_shapes(n, seed)`: n small colour images of five shapes on a noisy background,
  drawn with numpy (nothing is downloaded), and their labels; `make_shape` draws one.
- `ShapeNet(width)`: a small CNN that tells the shapes apart.
- `ShapeBatches`: the images as a map-style dataset whose items are whole batches, so a
  DataLoader's workers hand the GPU one ready batch at a time instead of 512 single images.
- `to_input(x, device)`: uint8 images -> normalised float input, on the device.
- `CLASSES`: the model's labels; `CLASS_NAMES[language]`: what people call them (en, zh-CN).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CLASSES = ("circle", "square", "triangle", "plus", "diamond")
# What people call each class, in the tutorials' languages (CLASSES stay the model's labels).
CLASS_NAMES = {
    "en": dict(zip(CLASSES, CLASSES, strict=True)),
    "zh-CN": dict(zip(CLASSES, ("圆形", "正方形", "三角形", "十字", "菱形"), strict=True)),
}
IMAGE_SIZE = 32


def draw(shape: np.ndarray, cx, cy, r, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean masks (n, size, size) of each image's shape (indices into CLASSES)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    r = r[:, None, None]
    ax, ay = np.abs(dx), np.abs(dy)
    masks = np.stack(
        [
            dx * dx + dy * dy <= r * r,  # circle
            np.maximum(ax, ay) <= r * 0.8,  # square
            (dy <= r * 0.7) & (ax <= (dy + r) * 0.6),  # triangle, point up
            ((ax <= r * 0.3) & (ay <= r)) | ((ay <= r * 0.3) & (ax <= r)),  # plus
            ax + ay <= r,  # diamond
        ]
    )
    return masks[shape, np.arange(len(shape))]


def make_shapes(
    n: int, seed: int = 0, noise: float = 0.15, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (uint8, n x 3 x 32 x 32) and labels (int64), the same for the same seed."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    labels = rng.integers(0, len(CLASSES), n)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        r = rng.uniform(5, 11, k).astype(np.float32)
        cx = rng.uniform(r, IMAGE_SIZE - r).astype(np.float32)
        cy = rng.uniform(r, IMAGE_SIZE - r).astype(np.float32)
        images[start : start + k] = paint(draw(labels[start : start + k], cx, cy, r), rng, noise)
    return torch.from_numpy(images), torch.from_numpy(labels)


def paint(masks: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """uint8 images from shape masks: a random colour on a darker one, plus noise."""
    k = len(masks)
    fg = rng.uniform(0.45, 1.0, (k, 3, 1, 1)).astype(np.float32)
    bg = rng.uniform(0.0, 0.35, (k, 3, 1, 1)).astype(np.float32)
    img = np.where(masks[:, None], fg, bg)
    img += noise * rng.standard_normal((k, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def make_shape(
    name: str, radius: float = 8, x: float = 16, y: float = 16, noise: float = 0.15, seed: int = 0
) -> torch.Tensor:
    """One image (uint8, 3 x 32 x 32) of the shape `name`, centred at (x, y), kept inside."""
    rng = np.random.default_rng(seed)
    r = np.float32(radius)
    cx, cy = (np.float32(min(max(v, r), IMAGE_SIZE - r)) for v in (x, y))
    mask = draw(np.array([CLASSES.index(name)]), np.array([cx]), np.array([cy]), np.array([r]))
    return torch.from_numpy(paint(mask, rng, noise)[0])


class ShapeBatches(torch.utils.data.Dataset):
    """Images and labels indexed by a whole batch of indices at once (use with
    `DataLoader(ShapeBatches(...), batch_size=None, sampler=BatchSampler(...))`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        index = torch.as_tensor(index)
        return self.images[index], self.labels[index]


def to_input(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 images -> float input in [-1, 1] on `device` (the conversion runs there)."""
    x = x.to(device, non_blocking=True).float()
    return x.mul_(2 / 255).sub_(1).contiguous(memory_format=torch.channels_last)


def block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ShapeNet(nn.Module):
    """Four conv blocks (width, 2w, 4w, 8w channels), global pooling, a linear head."""

    def __init__(self, width: int = 32, classes: int = len(CLASSES)):
        super().__init__()
        self.width = width
        w = width
        self.features = nn.Sequential(
            block(3, w, pool=False),
            block(w, 2 * w, pool=True),
            block(2 * w, 4 * w, pool=True),
            block(4 * w, 8 * w, pool=True),
        )
        self.head = nn.Linear(8 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def load_model(path, device: str | torch.device = "cpu") -> ShapeNet:
    """The model notebook 2 saved (its weights and width), ready for predictions."""
    saved = torch.load(path, map_location=device, weights_only=True)
    model = ShapeNet(width=int(saved["width"]))
    model.load_state_dict(saved["model"])
    return model.to(device).eval()


@torch.no_grad()
def predict(model: ShapeNet, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities (n x 5) for uint8 images (n x 3 x 32 x 32)."""
    device = next(model.parameters()).device
    return model(to_input(images, device)).float().softmax(1).cpu()
