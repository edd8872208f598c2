"""Training and evaluation transforms of Faceptor's tasks (paper Sec. 4.1, official `core/data/transform/*`).

Samples are dicts `{"image": PIL image or uint8 (H, W[, 3]) array/tensor, ...}` with, per task kind:
`"landmarks"` `(N, 2)` (x, y) pixels and an optional face `"box"` (x0, y0, x1, y1); `"mask"` `(H, W)` uint8
labels (LaPa also takes its 106 `"landmarks"` to align the face); `"label"` for the other kinds. Transforms
return `{"pixel_values": (3, S, S) float32, "labels": ...}` as the training code expects; evaluation
transforms of dense tasks also return the `"transform_matrix"` that maps original pixels to the crop.

Dense tasks (landmarks, parsing; 512 px, CLIP mean/std), FaRL's recipe as the official transforms:

- one 3x3 matrix maps original pixels (pixel centres at integer coordinates) to the S x S crop: face box ->
  crop (`crop_matrix`; LaPa: 5-point similarity to FaRL's template; else the centred square of the image),
  then a rotation/scale about the crop centre plus a shift (`rotate_scale_matrix`). Landmark training draws
  shift ~ U(+-0.05 S), rotation ~ U(+-0.174 rad), scale ~ U(mu +- 0.1) with mu 0.8 for 300W, COFW, WFLW and
  1.0 for AFLW (evaluation: scale mu only); parsing training draws shift ~ U(+-0.01 S), rotation
  ~ N(0, 0.314), scale ~ N(1, 0.1) (evaluation: none);
- the matrix warps the image (bilinear), the mask (nearest, labels preserved, outside = 0) and the points,
  optionally through a tanh-warp (`warp_factor`: 0 for CelebAMask-HQ and landmarks, 0.8 for LaPa):
  with u = 2 q / S - 1 the crop coordinate q scaled to [-1, 1] and f = warp_factor, every |u| > 1 - f is
  replaced by sign(u) ((1 - f) + f tanh((|u| - (1 - f)) / f)), squeezing the whole image into the crop
  border; its inverse uses artanh (argument clipped to +-0.999, as FaRL);
- then photometric noise: landmarks: a black occlusion box, noise blending (p 0.5), gray (p 0.1), gamma
  (sqrt / none / square), box blur up to 1% of the side; parsing: gray, gamma, blur.
- horizontal flip is available (`hflip_prob`) and composes a mirror into the same matrix, permuting the
  landmark indices (`LANDMARK_MIRRORS`) or swapping left/right parsing classes (`parsing_mirror_lut`); the
  official recipe does not flip dense tasks, so it is off by default for them.

Attribute tasks (112 px, mean/std 0.5), as timm's `create_transform(..., auto_augment="rand-m9-mstd0.5-inc1",
re_prob=0.25)`: central square crop (timm's fallback for non-square images such as CelebA's), bicubic
resize, horizontal flip, two RandAugment layers each applied with p 0.5 at magnitude ~ N(9, 0.5)
(torchvision's op set, which already has the increasing-severity variants but adds Identity and lacks
Invert and SolarizeAdd), RandomErasing (p 0.25, per-pixel normal noise). Identity: resize and horizontal
flip only. Evaluation: plain resize (squashing non-square images, as the official test transforms).

Scoring as the official evaluators: map landmark predictions back with `points_to_original` and parsing
logits with `crop_to_original` (then argmax) using the evaluation transform's `transform_matrix` and warp
factor, and compare with the original annotations.

Randomness: each call draws one 63-bit seed (from `seed=` of the call, else the transform's own generator
when built with a seed, else torch's global generator, which `DataLoader` seeds per worker) and derives all
its random choices from it, so equal seeds give equal outputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..processing.geometry import tanh_unwarp, tanh_warp
from ..processing.image_processing_faceptor import CLIP_MEAN, CLIP_STD, HALF
from ..task_presets import CELEBAMASK_HQ_CLASSES, LAPA_CLASSES
from .metrics._common import canonical_dataset

DENSE_KINDS = ("landmarks", "parsing")
ATTRIBUTE_KINDS = ("age", "classification", "multilabel")
KINDS = (*DENSE_KINDS, *ATTRIBUTE_KINDS, "embedding")
DENSE_SIZE, FACE_SIZE = 512, 112

# ------------------------------------------------------------------------------------ landmark mirror maps


def _mirror_permutation(num_points: int, pairs: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    permutation = list(range(num_points))
    seen: set[int] = set()
    for left, right in pairs:
        if {left, right} & seen or left == right:
            raise ValueError(f"Mirror pair ({left}, {right}) repeats a point.")
        seen |= {left, right}
        permutation[left], permutation[right] = right, left
    return tuple(permutation)


# 300W / Multi-PIE 68 points: jaw 0-16 (one ear to the other over the chin), brows 17-21 and 22-26 (each from
# the image-left end), nose bridge 27-30, nostrils 31-35 (image left to right), eyes 36-41 and 42-47 (from the
# image-left corner, clockwise), outer lips 48-59 (from the image-left corner, clockwise), inner lips 60-67.
_PAIRS_300W = (
    *[(i, 16 - i) for i in range(8)],
    *[(17 + i, 26 - i) for i in range(5)],
    (31, 35),
    (32, 34),
    (36, 45),
    (37, 44),
    (38, 43),
    (39, 42),
    (40, 47),
    (41, 46),
    (48, 54),
    (49, 53),
    (50, 52),
    (55, 59),
    (56, 58),
    (60, 64),
    (61, 63),
    (65, 67),
)

# WFLW 98 points: jaw 0-32, brows 33-41 and 42-50 (upper edge from the image-left end, then the lower edge
# back), nose bridge 51-54, nostrils 55-59, eyes 60-67 and 68-75 (from the image-left corner, clockwise),
# outer lips 76-87, inner lips 88-95, pupils 96 and 97.
_PAIRS_WFLW = (
    *[(i, 32 - i) for i in range(16)],
    *[(33 + i, 46 - i) for i in range(5)],
    (38, 50),
    (39, 49),
    (40, 48),
    (41, 47),
    (55, 59),
    (56, 58),
    (60, 72),
    (61, 71),
    (62, 70),
    (63, 69),
    (64, 68),
    (65, 75),
    (66, 74),
    (67, 73),
    (76, 82),
    (77, 81),
    (78, 80),
    (83, 87),
    (84, 86),
    (88, 92),
    (89, 91),
    (93, 95),
    (96, 97),
)

# COFW / LFPW 29 points, left | right: brow outer ends 0 | 1, brow inner ends 2 | 3, brow top 4 | 6, brow bottom
# 5 | 7, eye outer corners 8 | 9, eye inner corners 10 | 11, eye top 12 | 14, eye bottom 13 | 15, pupils
# 16 | 17, nose wings 18 | 19, mouth corners 22 | 23; on the midline: nose tip 20, nose base 21, lip centres
# 24-27, chin 28.
_PAIRS_COFW = (
    (0, 1),
    (2, 3),
    (4, 6),
    (5, 7),
    (8, 9),
    (10, 11),
    (12, 14),
    (13, 15),
    (16, 17),
    (18, 19),
    (22, 23),
)

# AFLW-19 (AFLW's 21 points without the ears): brows 0-2 | 3-5 (each from the image-left end), eyes 6-8 | 9-11
# (corner, centre, corner), nose 12 | 14 (wings) and 13 (tip), mouth 15 | 17 (corners) and 16, chin 18.
_PAIRS_AFLW = ((0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17))

LANDMARK_MIRRORS: dict[str, tuple[int, ...]] = {
    "300w": _mirror_permutation(68, _PAIRS_300W),
    "wflw": _mirror_permutation(98, _PAIRS_WFLW),
    "cofw": _mirror_permutation(29, _PAIRS_COFW),
    "aflw": _mirror_permutation(19, _PAIRS_AFLW),
}
_MIRROR_BY_COUNT = {len(permutation): name for name, permutation in LANDMARK_MIRRORS.items()}


def landmark_mirror_permutation(dataset: str | None = None, num_points: int | None = None) -> np.ndarray:
    """Index permutation p with `flipped[i] = mirrored(points[p[i]])`: after a horizontal flip, point i of
    the layout is the mirror image of point p[i]. By dataset (aliases accepted) or number of points."""
    key = canonical_dataset(dataset)
    if key is None and num_points in _MIRROR_BY_COUNT:
        key = _MIRROR_BY_COUNT[num_points]
    if key not in LANDMARK_MIRRORS:
        raise ValueError(f"No landmark mirror map for dataset {dataset!r} with {num_points} points.")
    permutation = np.asarray(LANDMARK_MIRRORS[key])
    if num_points is not None and len(permutation) != num_points:
        raise ValueError(f"Dataset {dataset!r} has {len(permutation)} points, got {num_points}.")
    return permutation


PARSING_CLASSES = {"celebamask_hq": CELEBAMASK_HQ_CLASSES, "lapa": LAPA_CLASSES}


def parsing_mirror_lut(class_names: Sequence[str]) -> np.ndarray:
    """Label lookup table swapping every `left_<part>` class with `right_<part>` (others map to themselves)."""
    index = {name: i for i, name in enumerate(class_names)}
    lut = np.arange(len(class_names))
    for name, i in index.items():
        for side, other in (("left_", "right_"), ("right_", "left_")):
            if name.startswith(side) and other + name[len(side) :] in index:
                lut[i] = index[other + name[len(side) :]]
    return lut


# ---------------------------------------------------------------------------------------------- geometry


def crop_matrix(box: Sequence[float], size: int) -> np.ndarray:
    """Box (x0, y0, x1, y1) -> the S x S crop, as the official `UpdateCropAndResizeMatrix(align_corners=False)`:
    x -> (x - x0) / (x1 - x0) * S - 0.5 (box edges on pixel boundaries, pixel centres at integers)."""
    x0, y0, x1, y1 = (float(value) for value in box)
    ax, ay = size / (x1 - x0), size / (y1 - y0)
    return np.array([[ax, 0, -x0 * ax - 0.5], [0, ay, -y0 * ay - 0.5], [0, 0, 1]], dtype=np.float64)


def square_box(height: int, width: int) -> tuple[float, float, float, float]:
    """The square of side max(H, W) centred on the image, in pixel-boundary coordinates."""
    side = max(height, width)
    x0, y0 = (width - side) / 2 - 0.5, (height - side) / 2 - 0.5
    return x0, y0, x0 + side, y0 + side


def resize_matrix(from_hw: Sequence[int], to_hw: Sequence[int]) -> np.ndarray:
    """Pixel coordinates of an (H, W) grid -> those of the same extent sampled (h, w) (align_corners=False)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


def rotate_scale_matrix(angle: float, scale: float, shift: Sequence[float], size: int) -> np.ndarray:
    """Rotation by `angle` (radians) and scaling about the crop centre ((S - 1) / 2), then a shift in pixels
    (FaRL's `_compose_rotate_and_scale` from an S x S to an S x S frame)."""
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    centre = (size - 1) / 2
    return np.array(
        [
            [cos, -sin, centre - cos * centre + sin * centre + shift[0]],
            [sin, cos, centre - sin * centre - cos * centre + shift[1]],
            [0, 0, 1],
        ],
        dtype=np.float64,
    )


def flip_matrix(size: int) -> np.ndarray:
    """Horizontal mirror of an S-wide crop: x -> S - 1 - x."""
    return np.array([[-1, 0, size - 1], [0, 1, 0], [0, 0, 1]], dtype=np.float64)


def similarity_matrix(source, target) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping `source` points
    `(K, 2)` onto `target` (Umeyama 1991), as a 3x3 matrix."""
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = (singular * signs).sum() / source_centred.var(axis=0).sum()
    matrix = np.eye(3)
    matrix[:2, :2] = scale * rotation
    matrix[:2, 2] = target_mean - scale * rotation @ source_mean
    return matrix


# FaRL's 5-point face template (eye centres, nose tip, mouth corners) in [-1, 1] crop coordinates.
FACE_TEMPLATE = np.array([[196.0, 226.0], [316.0, 226.0], [256.0, 286.0], [220.0, 360.4], [292.0, 360.4]]) / 256 - 1
LAPA_ALIGN_POINTS = (104, 105, 54, 84, 90)  # pupils, nose tip, mouth corners of LaPa's 106 points (official)


def face_align_matrix(points5, size: int) -> np.ndarray:
    """5 face points -> the S x S crop where they best fit FaRL's template (official `GetFaceAlignMatrix`)."""
    target = (FACE_TEMPLATE + 1) * (size - 1) / 2
    return similarity_matrix(points5, target)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def points_to_crop(points, matrix: np.ndarray, size: int, warp_factor: float = 0.0) -> np.ndarray:
    """Original-image points `(N, 2)` -> crop pixels (FaRL's `TransformPoints2D`)."""
    return tanh_warp(
        _apply(np.asarray(matrix, dtype=np.float64), np.asarray(points, dtype=np.float64)), size, warp_factor
    )


def points_to_original(points, matrix, size: int, warp_factor: float = 0.0) -> np.ndarray:
    """Crop points `(N, 2)` (e.g. predictions) -> original-image pixels (FaRL's `TransformPoints2DInverted`),
    for scoring landmarks in original coordinates as the official evaluators do."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return _apply(np.linalg.inv(matrix), tanh_unwarp(np.asarray(points, dtype=np.float64), size, warp_factor))


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> torch.Tensor:
    """`(H * W, 2)` float64 (x, y) pixel centres, row by row."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2)


def _sampling_grid(coords: torch.Tensor, source_hw: Sequence[int], out_hw: Sequence[int]) -> torch.Tensor:
    """Source pixel coordinates `(h * w, 2)` -> a `grid_sample` grid `(1, h, w, 2)` (align_corners=False)."""
    height, width = source_hw
    scale = torch.tensor([width, height], dtype=torch.float64)
    return ((2 * coords + 1) / scale - 1).reshape(1, *out_hw, 2).float()


def crop_sampling_grid(matrix, size: int, warp_factor: float, source_hw: Sequence[int]) -> torch.Tensor:
    """Where each crop pixel reads the original image: the inverse tanh-warp, then the inverse matrix."""
    crop = tanh_unwarp(_pixel_grid(size, size), size, warp_factor)
    inverse = torch.from_numpy(np.linalg.inv(np.asarray(matrix, dtype=np.float64)))
    return _sampling_grid(_apply(inverse, crop), source_hw, (size, size))


def _grid_sample(source: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    return F.grid_sample(source[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


def warp_to_crop(source: torch.Tensor, matrix: np.ndarray, size: int, warp_factor: float = 0.0, mode="bilinear"):
    """Warp `(C, H, W)` original pixels into the S x S crop (bilinear for images, nearest for label maps);
    outside the original image reads 0."""
    return _grid_sample(source, crop_sampling_grid(matrix, size, warp_factor, source.shape[-2:]), mode)


def crop_to_original(crop: torch.Tensor, matrix, image_hw: Sequence[int], warp_factor: float = 0.0, mode="bilinear"):
    """Warp `(C, S, S)` crop values (e.g. parsing logits) back onto the original `(H, W)` image: the official
    test post-transform (`GetInvertedTransformMap` + bilinear remap), before the argmax."""
    size = crop.shape[-1]
    forward = torch.from_numpy(np.asarray(matrix, dtype=np.float64))
    coords = tanh_warp(_apply(forward, _pixel_grid(*image_hw)), size, warp_factor)
    return _grid_sample(crop, _sampling_grid(coords, crop.shape[-2:], tuple(image_hw)), mode)


# --------------------------------------------------------------------------------------------- inputs


def image_to_tensor(image) -> torch.Tensor:
    """PIL image, `(H, W[, C])` uint8 array or `(C, H, W)` uint8 tensor -> `(3, H, W)` uint8 tensor (RGB)."""
    if isinstance(image, torch.Tensor):
        tensor = image if image.ndim == 3 and image.shape[0] in (1, 3, 4) else image.permute(2, 0, 1)
    else:
        # A writable copy: PIL hands out read-only buffers, which torch cannot wrap safely.
        array = np.array(image.convert("RGB") if hasattr(image, "convert") else image)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if tensor.dtype != torch.uint8:
        raise ValueError(f"Images must be uint8, got {tensor.dtype}.")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor[:3].contiguous()


def _as_mask(mask) -> torch.Tensor:
    if isinstance(mask, torch.Tensor):
        return mask.squeeze()
    return torch.from_numpy(np.array(mask)).squeeze()  # a writable copy (PIL hands out read-only buffers)


def _label_tensor(kind: str, label) -> torch.Tensor:
    if kind == "age" or (kind == "embedding" and np.ndim(label) > 0):  # a teacher's embedding, not an identity
        return torch.as_tensor(np.asarray(label), dtype=torch.float32)
    return torch.as_tensor(np.asarray(label), dtype=torch.long)


class _Seeds:
    """Per-call seeds: the call's `seed=`, else the transform's own generator, else torch's global one."""

    def __init__(self, seed: int | None):
        self.generator = None if seed is None else np.random.default_rng(seed)

    def next(self, seed: int | None) -> int:
        if seed is not None:
            return int(seed)
        if self.generator is not None:
            return int(self.generator.integers(2**63 - 1))
        return int(torch.randint(0, 2**63 - 1, (1,)).item())


# ------------------------------------------------------------------------------------ photometric noise


def random_occlusion(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A black box of height 10-40 % of the side (width +-10 % of that) at a random centre (FaRL's
    `RandomOcclusion`, always applied in the official landmark recipe)."""
    _, height, width = image.shape
    box_h = rng.uniform(0.2, 0.8)
    box_w = box_h - 0.2 + 0.4 * rng.uniform()
    cx, cy = int((height - 1) * rng.uniform()), int((width - 1) * rng.uniform())
    half_h, half_w = int(height / 2 * box_h) // 2, int(width / 2 * box_w) // 2
    x0, y0 = max(0, cx - half_w), max(0, cy - half_h)
    x1, y1 = min(width - 1, cx + half_w), min(height - 1, cy + half_h)
    image = image.clone()
    image[:, y0 : y1 + 1, x0 : x1 + 1] = 0
    return image


def noise_fusion(image: torch.Tensor, rng: np.random.Generator, generator: torch.Generator) -> torch.Tensor:
    """Blend with uniform noise, weight ~ U(0, 0.5) (FaRL's `NoiseFusion`)."""
    alpha = 0.5 * rng.uniform()
    return (1 - alpha) * image + alpha * torch.rand(image.shape, generator=generator)


def random_gray(image: torch.Tensor, rng: np.random.Generator, probability: float = 0.1) -> torch.Tensor:
    """With probability 0.1, ITU-R 601 luma on all three channels (FaRL's `RandomGray`)."""
    if rng.uniform() < probability:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype).view(3, 1, 1)
        image = (image * weights).sum(dim=0, keepdim=True).expand(3, -1, -1).clone()
    return image


def random_gamma(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Clamp to [0, 1], then sqrt, nothing or square, equally likely (FaRL's `RandomGamma`)."""
    image = image.clamp(0, 1)
    choice = rng.integers(-1, 2)
    return image.sqrt() if choice == -1 else image.square() if choice == 1 else image


def random_blur(image: torch.Tensor, rng: np.random.Generator, scale: float = 0.01) -> torch.Tensor:
    """Box blur with a k x k kernel, k = int(side * U(0, 0.01)), when k > 1 (FaRL's `RandomBlur`, cv2.blur's
    reflect-101 border and anchor)."""
    size = int((image.shape[1] + image.shape[2]) / 2 * rng.uniform(0.0, scale))
    if size <= 1:
        return image
    before, after = size // 2, size - 1 - size // 2
    padded = F.pad(image.clamp(0, 1)[None], (before, after, before, after), mode="reflect")
    return F.avg_pool2d(padded, size, stride=1)[0]


# ------------------------------------------------------------------------------------------ dense tasks


@dataclass(frozen=True)
class RandomAffine:
    """Distribution of the random crop transform: U(mu +- sigma) or N(mu, sigma) per quantity; the shift is
    a fraction of the crop side."""

    shift_sigma: float
    rot_sigma: float
    scale_sigma: float
    scale_mu: float = 1.0
    shift_normal: bool = False
    rot_normal: bool = False
    scale_normal: bool = False

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        def value(mu, sigma, normal, count=None):
            return rng.normal(mu, sigma, count) if normal else rng.uniform(mu - sigma, mu + sigma, count)

        shift = value(0.0, self.shift_sigma, self.shift_normal, 2) * size
        angle = value(0.0, self.rot_sigma, self.rot_normal)
        scale = value(self.scale_mu, self.scale_sigma, self.scale_normal)
        return rotate_scale_matrix(float(angle), float(scale), shift, size)


ALIGN_SCALE_MU = {"300w": 0.8, "cofw": 0.8, "wflw": 0.8, "aflw": 1.0}  # official align_*_transform scale_mu
PARSING_WARP_FACTOR = {"celebamask_hq": 0.0, "lapa": 0.8}  # official celebam / lapa transforms


def align_affine(dataset: str | None) -> RandomAffine:
    """Official `align_train_transform`: uniform shift 0.05, rotation 0.174 rad, scale mu +- 0.1."""
    return RandomAffine(0.05, 0.174, 0.1, ALIGN_SCALE_MU.get(canonical_dataset(dataset), 1.0))


PARSING_AFFINE = RandomAffine(0.01, 0.314, 0.1, 1.0, shift_normal=False, rot_normal=True, scale_normal=True)


class DenseTransform:
    """Landmark or parsing transform (train: random crop, optional flip, photometric noise; eval: fixed crop).
    See the module docstring; `__call__(sample, seed=None)`."""

    def __init__(
        self,
        kind: str,
        input_size: int = DENSE_SIZE,
        dataset: str | None = None,
        train: bool = True,
        hflip_prob: float = 0.0,
        photometric: bool = True,
        warp_factor: float | None = None,
        seed: int | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ):
        if kind not in DENSE_KINDS:
            raise ValueError(f"DenseTransform handles {DENSE_KINDS}, not {kind!r}.")
        self.kind, self.size, self.train = kind, input_size, train
        self.dataset = canonical_dataset(dataset)
        self.hflip_prob, self.photometric = hflip_prob, photometric
        if warp_factor is None:
            warp_factor = PARSING_WARP_FACTOR.get(self.dataset, 0.0) if kind == "parsing" else 0.0
        self.warp_factor = warp_factor
        self.affine = align_affine(self.dataset) if kind == "landmarks" else PARSING_AFFINE
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.class_names = PARSING_CLASSES.get(self.dataset) if kind == "parsing" else None
        self._seeds = _Seeds(seed)

    def base_matrix(self, sample: Mapping, height: int, width: int) -> np.ndarray:
        """Original pixels -> crop before any augmentation: LaPa's 5-point alignment, the face box, or the
        centred square of the image."""
        landmarks = sample.get("landmarks")
        if self.kind == "parsing" and self.dataset == "lapa" and landmarks is not None and len(landmarks) == 106:
            return face_align_matrix(np.asarray(landmarks, dtype=np.float64)[list(LAPA_ALIGN_POINTS)], self.size)
        box = sample.get("box")
        return crop_matrix(square_box(height, width) if box is None else box, self.size)

    def matrix(self, sample: Mapping, height: int, width: int, rng: np.random.Generator | None) -> np.ndarray:
        matrix = self.base_matrix(sample, height, width)
        if rng is not None:
            return self.affine.draw(rng, self.size) @ matrix
        if self.kind == "landmarks":
            return rotate_scale_matrix(0.0, self.affine.scale_mu, (0.0, 0.0), self.size) @ matrix
        return matrix

    def __call__(self, sample: Mapping, seed: int | None = None) -> dict:
        image = image_to_tensor(sample["image"]).float() / 255.0
        height, width = image.shape[-2:]
        call_seed = self._seeds.next(seed) if self.train else 0
        rng = np.random.default_rng(call_seed) if self.train else None
        matrix = self.matrix(sample, height, width, rng)
        flip = self.train and self.hflip_prob > 0 and rng.uniform() < self.hflip_prob
        if flip:
            matrix = flip_matrix(self.size) @ matrix
        grid = crop_sampling_grid(matrix, self.size, self.warp_factor, (height, width))
        pixels = _grid_sample(image, grid, "bilinear")
        output = {}
        if self.kind == "landmarks":
            points = np.asarray(sample["landmarks"], dtype=np.float64)
            crop_points = points_to_crop(points, matrix, self.size, self.warp_factor)
            if flip:
                crop_points = crop_points[landmark_mirror_permutation(self.dataset, len(points))]
            output["labels"] = torch.from_numpy(crop_points.astype(np.float32))
        else:
            mask = _as_mask(sample["mask"])
            if tuple(mask.shape) != (height, width):  # e.g. CelebAMask-HQ: 1024-px images, 512-px masks
                mask_matrix = matrix @ resize_matrix(mask.shape, (height, width))
                grid = crop_sampling_grid(mask_matrix, self.size, self.warp_factor, mask.shape)
            labels = _grid_sample(mask[None], grid, "nearest")[0].round().long()
            if flip:
                if self.class_names is None:
                    raise ValueError(f"Flipping parsing masks needs the class names of dataset {self.dataset!r}.")
                lut = torch.from_numpy(parsing_mirror_lut(self.class_names))
                if labels.max() >= len(lut):
                    raise ValueError(f"Mask labels reach {int(labels.max())}; {self.dataset} has {len(lut)} classes.")
                labels = lut[labels]
            output["labels"] = labels
        if self.train and self.photometric:
            generator = torch.Generator().manual_seed(call_seed)
            if self.kind == "landmarks":
                pixels = random_occlusion(pixels, rng)
                if rng.uniform() < 0.5:
                    pixels = noise_fusion(pixels, rng, generator)
            pixels = random_blur(random_gamma(random_gray(pixels, rng), rng), rng)
        output["pixel_values"] = ((pixels - self.mean) / self.std).float()
        if not self.train:
            output["transform_matrix"] = torch.from_numpy(matrix)
            if "box" in sample:
                output["box"] = torch.as_tensor(np.asarray(sample["box"], dtype=np.float32))
        return dict(sorted(output.items()))


# -------------------------------------------------------------------------------------- 112-px face tasks


class _CentreSquare(torch.nn.Module):
    """Central square crop of side min(H, W): what timm's RandomResizedCropAndInterpolation with scale and
    ratio (1, 1) falls back to on non-square images (e.g. CelebA's 178 x 218); square images pass whole."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return image[..., top : top + side, left : left + side]


class _RandAugmentLayer(torch.nn.Module):
    """One RandAugment op applied with probability 0.5 at magnitude ~ N(9, 0.5) clipped to [0, 10] (timm's
    `rand-m9-mstd0.5` layer), on torchvision's op set with 101 magnitude bins (0.1 steps)."""

    def __init__(
        self, magnitude: float = 9.0, magnitude_std: float = 0.5, fill: int | Sequence[int] = 128, p: float = 0.5
    ):
        super().__init__()
        self.magnitude, self.magnitude_std, self.p = magnitude, magnitude_std, p
        self.op = v2.RandAugment(num_ops=1, magnitude=90, num_magnitude_bins=101, fill=fill)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        magnitude = float(torch.normal(torch.tensor(self.magnitude), torch.tensor(self.magnitude_std)))
        self.op.magnitude = int(round(min(10.0, max(0.0, magnitude)) * 10))
        return self.op(image)


class FaceTransform:
    """Attribute (age, expression, binary attributes) or identity transform of 112-px face crops."""

    def __init__(
        self,
        kind: str,
        input_size: int = FACE_SIZE,
        train: bool = True,
        hflip_prob: float = 0.5,
        seed: int | None = None,
        mean: Sequence[float] = HALF,
        std: Sequence[float] = HALF,
    ):
        if kind not in (*ATTRIBUTE_KINDS, "embedding"):
            raise ValueError(f"FaceTransform handles {(*ATTRIBUTE_KINDS, 'embedding')}, not {kind!r}.")
        self.kind, self.size, self.train = kind, input_size, train
        size = [input_size, input_size]
        steps: list = []
        if train and kind != "embedding":
            steps += [_CentreSquare(), v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
        else:
            steps.append(v2.Resize(size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True))
        if train:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
            if kind != "embedding":
                fill = [round(255 * value) for value in mean]
                steps += [_RandAugmentLayer(fill=fill), _RandAugmentLayer(fill=fill)]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        if train and kind != "embedding":
            steps.append(v2.RandomErasing(p=0.25, value="random"))
        self.pipeline = v2.Compose(steps)
        self._seeds = _Seeds(seed)

    def __call__(self, sample: Mapping, seed: int | None = None) -> dict:
        image = image_to_tensor(sample["image"])
        if self.train:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seeds.next(seed))
                pixels = self.pipeline(image)
        else:
            pixels = self.pipeline(image)
        return {"labels": _label_tensor(self.kind, sample["label"]), "pixel_values": pixels}


# --------------------------------------------------------------------------------------------- builders


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"Unknown task kind {kind!r}; expected one of {KINDS}.")


def build_train_transform(
    kind: str,
    input_size: int | None = None,
    dataset: str | None = None,
    *,
    hflip_prob: float | None = None,
    photometric: bool = True,
    warp_factor: float | None = None,
    seed: int | None = None,
) -> Callable[[dict], dict]:
    """Training transform of a task kind (`landmarks`, `parsing`, `age`, `classification`, `multilabel`,
    `embedding`) at `input_size` (512 dense, 112 otherwise, by default) for `dataset` (e.g. "300w", "wflw",
    "cofw", "aflw", "celebamask_hq", "lapa"; official task names work too). `hflip_prob` defaults to the
    official recipe: 0 for dense tasks, 0.5 otherwise. `photometric=False` keeps only the geometry of dense
    tasks; `warp_factor` overrides the parsing tanh-warp."""
    _check_kind(kind)
    if kind in DENSE_KINDS:
        return DenseTransform(
            kind,
            input_size or DENSE_SIZE,
            dataset,
            train=True,
            hflip_prob=0.0 if hflip_prob is None else hflip_prob,
            photometric=photometric,
            warp_factor=warp_factor,
            seed=seed,
        )
    return FaceTransform(kind, input_size or FACE_SIZE, True, 0.5 if hflip_prob is None else hflip_prob, seed)


def build_eval_transform(
    kind: str, input_size: int | None = None, dataset: str | None = None, *, warp_factor: float | None = None
) -> Callable[[dict], dict]:
    """Evaluation transform matching `build_train_transform` (official `*_test_transform`): fixed crop (with
    the landmark scale mu, the LaPa alignment and tanh-warp), resize and normalisation only."""
    _check_kind(kind)
    if kind in DENSE_KINDS:
        return DenseTransform(kind, input_size or DENSE_SIZE, dataset, train=False, warp_factor=warp_factor)
    return FaceTransform(kind, input_size or FACE_SIZE, train=False)
