"""Augmentations: points follow the pixels, flips mirror the right indices and classes, masks stay labels,
seeds reproduce, the tanh-warp inverts."""

import numpy as np
import pytest
import torch

from faceptor.processing.image_processing_faceptor import CLIP_MEAN, CLIP_STD
from faceptor.task_presets import CELEBAMASK_HQ_CLASSES, LAPA_CLASSES
from faceptor.train.augmentation import (
    FACE_TEMPLATE,
    LANDMARK_MIRRORS,
    DenseTransform,
    RandomAffine,
    build_eval_transform,
    build_train_transform,
    crop_to_original,
    face_align_matrix,
    image_to_tensor,
    landmark_mirror_permutation,
    parsing_mirror_lut,
    points_to_crop,
    points_to_original,
    rotate_scale_matrix,
    similarity_matrix,
    tanh_unwarp,
    tanh_warp,
    warp_to_crop,
)
from faceptor.train.metrics import LANDMARK_PROTOCOLS

# ------------------------------------------------------- symmetric templates from the point definitions
# x to the right, y down, face centred on x = 0. Contours listed "clockwise" start at their image-left end and
# run over the top first (eyes, lips, WFLW brows), as the 300W and WFLW markups define them.


def _u_curve(count):  # jaw: from one ear over the chin to the other
    angles = np.linspace(0, np.pi, count)
    return np.stack([-np.cos(angles), np.sin(angles)], axis=1)


def _row(count, x0, x1, y, arch=0.0):  # points from image-left to image-right, arched symmetrically
    t = np.linspace(0, 1, count)
    return np.stack([np.linspace(x0, x1, count), y - arch * np.sin(np.pi * t)], axis=1)


def _clockwise(count, cx, cy, rx, ry):  # closed contour from its image-left corner, over the top
    angles = np.pi - 2 * np.pi * np.arange(count) / count
    return np.stack([cx + rx * np.cos(angles), cy - ry * np.sin(angles)], axis=1)


def _template_300w():
    return np.concatenate(
        [
            _u_curve(17),
            _row(5, -0.8, -0.2, -0.5, 0.1),
            _row(5, 0.2, 0.8, -0.5, 0.1),
            _row(4, 0.0, 0.0, -0.3) + [[0, 0], [0, 0.1], [0, 0.2], [0, 0.3]],  # bridge, downwards
            _row(5, -0.15, 0.15, 0.1, -0.03),
            _clockwise(6, -0.45, -0.3, 0.15, 0.05),
            _clockwise(6, 0.45, -0.3, 0.15, 0.05),
            _clockwise(12, 0.0, 0.5, 0.35, 0.12),
            _clockwise(8, 0.0, 0.5, 0.25, 0.04),
        ]
    )


def _brow_clockwise(x_left, x_right):  # WFLW brow: 5 upper points left to right, 4 lower points back
    upper = _row(5, x_left, x_right, -0.55, 0.08)
    lower = _row(4, x_right - 0.1, x_left + 0.1, -0.45)
    return np.concatenate([upper, lower])


def _template_wflw():
    return np.concatenate(
        [
            _u_curve(33),
            _brow_clockwise(-0.8, -0.2),
            _brow_clockwise(0.2, 0.8),
            _row(4, 0.0, 0.0, -0.3) + [[0, 0], [0, 0.1], [0, 0.2], [0, 0.3]],
            _row(5, -0.15, 0.15, 0.1, -0.03),
            _clockwise(8, -0.45, -0.3, 0.15, 0.05),
            _clockwise(8, 0.45, -0.3, 0.15, 0.05),
            _clockwise(12, 0.0, 0.5, 0.35, 0.12),
            _clockwise(8, 0.0, 0.5, 0.25, 0.04),
            [[-0.45, -0.3], [0.45, -0.3]],  # pupils
        ]
    )


def _named(layout):  # "L"/"R" = image-left/right copy of a point; "C" = on the midline
    points = []
    for side, x, y in layout:
        points.append([{"L": -x, "R": x, "C": 0.0}[side], y])
    return np.array(points)


# COFW / LFPW 29: brow outer, brow inner, brow top L, brow bottom L, brow top R, brow bottom R, eye outer,
# eye inner, eye top L, eye bottom L, eye top R, eye bottom R, pupils, nose wings, nose tip, nose base, mouth
# corners, upper lip top and bottom, lower lip top and bottom, chin.
_COFW = [
    ("L", 0.8, -0.5),
    ("R", 0.8, -0.5),
    ("L", 0.2, -0.5),
    ("R", 0.2, -0.5),
    ("L", 0.5, -0.6),
    ("L", 0.5, -0.45),
    ("R", 0.5, -0.6),
    ("R", 0.5, -0.45),
    ("L", 0.65, -0.3),
    ("R", 0.65, -0.3),
    ("L", 0.25, -0.3),
    ("R", 0.25, -0.3),
    ("L", 0.45, -0.35),
    ("L", 0.45, -0.25),
    ("R", 0.45, -0.35),
    ("R", 0.45, -0.25),
    ("L", 0.45, -0.3),
    ("R", 0.45, -0.3),
    ("L", 0.15, 0.1),
    ("R", 0.15, 0.1),
    ("C", 0, 0.05),
    ("C", 0, 0.12),
    ("L", 0.3, 0.4),
    ("R", 0.3, 0.4),
    ("C", 0, 0.33),
    ("C", 0, 0.38),
    ("C", 0, 0.42),
    ("C", 0, 0.48),
    ("C", 0, 0.9),
]

# AFLW-19: left brow (left corner, centre, right corner), right brow (same), left eye (left corner, centre,
# right corner), right eye (same), nose left, nose centre, nose right, mouth left, centre, right, chin.
_AFLW = [
    ("L", 0.8, -0.5),
    ("L", 0.5, -0.6),
    ("L", 0.2, -0.5),
    ("R", 0.2, -0.5),
    ("R", 0.5, -0.6),
    ("R", 0.8, -0.5),
    ("L", 0.65, -0.3),
    ("L", 0.45, -0.3),
    ("L", 0.25, -0.3),
    ("R", 0.25, -0.3),
    ("R", 0.45, -0.3),
    ("R", 0.65, -0.3),
    ("L", 0.15, 0.1),
    ("C", 0, 0.05),
    ("R", 0.15, 0.1),
    ("L", 0.3, 0.4),
    ("C", 0, 0.42),
    ("R", 0.3, 0.4),
    ("C", 0, 0.9),
]

TEMPLATES = {
    "300w": _template_300w(),
    "wflw": _template_wflw(),
    "cofw": _named(_COFW),
    "aflw": _named(_AFLW),
}


def _geometric_mirror(points):
    mirrored = points * [-1, 1]
    distances = np.linalg.norm(mirrored[:, None] - points[None], axis=-1)
    assert np.all(np.sort(distances, axis=1)[:, 1] > 1e-6), "template points must be distinct"
    assert distances.min(axis=1).max() < 1e-9, "template is not symmetric"
    return distances.argmin(axis=1)


@pytest.mark.parametrize("dataset", sorted(TEMPLATES))
def test_mirror_permutations_match_the_point_definitions(dataset):
    template = TEMPLATES[dataset]
    permutation = landmark_mirror_permutation(dataset)
    assert len(template) == len(permutation) == LANDMARK_PROTOCOLS[dataset].num_points
    np.testing.assert_array_equal(permutation, _geometric_mirror(template))
    np.testing.assert_array_equal(permutation[permutation], np.arange(len(permutation)))  # an involution
    # The official normalisations pair a point (group) with its mirror image.
    for left, right in (n for n in LANDMARK_PROTOCOLS[dataset].normalizations.values() if not isinstance(n, str)):
        assert sorted(permutation[list(left)]) == sorted(right)


@pytest.mark.parametrize("dataset", sorted(TEMPLATES))
def test_flip_maps_a_symmetric_face_onto_itself(dataset):
    points = 63.5 + 40 * TEMPLATES[dataset]  # symmetric about the crop's centre column
    sample = {"image": np.zeros((128, 128, 3), np.uint8), "landmarks": points}
    fixed = RandomAffine(0.0, 0.0, 0.0, 1.0)  # the identity crop, so only the flip acts
    flipped = DenseTransform("landmarks", 128, dataset, hflip_prob=1.0, photometric=False)
    plain = DenseTransform("landmarks", 128, dataset, hflip_prob=0.0, photometric=False)
    flipped.affine = plain.affine = fixed
    torch.testing.assert_close(flipped(sample, seed=0)["labels"], plain(sample, seed=0)["labels"])
    torch.testing.assert_close(plain(sample, seed=0)["labels"], torch.from_numpy(points).float())


def test_parsing_flip_swaps_left_and_right_classes():
    celeb, lapa = parsing_mirror_lut(CELEBAMASK_HQ_CLASSES), parsing_mirror_lut(LAPA_CLASSES)
    assert {(i, int(j)) for i, j in enumerate(celeb) if i != j} == {(4, 5), (5, 4), (6, 7), (7, 6), (8, 9), (9, 8)}
    assert {(i, int(j)) for i, j in enumerate(lapa) if i != j} == {(2, 3), (3, 2), (4, 5), (5, 4)}
    # A symmetric face whose image-left eye is "left_eye": flipped and swapped, it is unchanged.
    left_eye, right_eye, nose = (CELEBAMASK_HQ_CLASSES.index(n) for n in ("left_eye", "right_eye", "nose"))
    mask = np.zeros((64, 64), np.uint8)
    mask[20:28, 10:22], mask[20:28, 42:54], mask[30:44, 26:38] = left_eye, right_eye, nose
    sample = {"image": np.zeros((64, 64, 3), np.uint8), "mask": mask}
    flipped = DenseTransform("parsing", 64, "celebamask_hq", hflip_prob=1.0, photometric=False)
    plain = DenseTransform("parsing", 64, "celebamask_hq", hflip_prob=0.0, photometric=False)
    flipped.affine = plain.affine = RandomAffine(0.0, 0.0, 0.0, 1.0)
    torch.testing.assert_close(flipped(sample, seed=1)["labels"], plain(sample, seed=1)["labels"])
    np.testing.assert_array_equal(plain(sample, seed=1)["labels"].numpy(), mask)


# --------------------------------------------------------------------------- points follow the pixels


def _dot_image(points, size):
    ys, xs = np.mgrid[:size, :size]
    image = np.zeros((size, size))
    for x, y in points:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5**2))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None].repeat(3, axis=2)


def _centroid(image, x, y, radius=4):
    x0, y0 = int(round(x)), int(round(y))
    window = image[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    ys, xs = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([(window * xs).sum(), (window * ys).sum()]) / window.sum()


@pytest.mark.parametrize(
    ("dataset", "count", "hflip", "warp_factor"),
    [("300w", 20, 0.0, 0.0), ("aflw", 19, 1.0, 0.0), ("cofw", 29, 0.5, 0.6)],
)
def test_landmarks_land_on_their_dots(dataset, count, hflip, warp_factor):
    grid = np.stack(np.meshgrid(np.linspace(40, 120, 6), np.linspace(40, 120, 5)), axis=-1).reshape(-1, 2)[:count]
    sample = {"image": _dot_image(grid, 160), "landmarks": grid, "box": [20.0, 20.0, 140.0, 140.0]}
    transform = build_train_transform(
        "landmarks", 160, dataset, hflip_prob=hflip, photometric=False, warp_factor=warp_factor
    )
    mean, std = np.array(CLIP_MEAN)[:, None, None], np.array(CLIP_STD)[:, None, None]
    checked = 0
    for seed in range(3):
        out = transform(sample, seed=seed)
        image = (out["pixel_values"].numpy() * std + mean).mean(axis=0)
        points = out["labels"].numpy()
        gaps = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(len(points)) * 1e9
        for (x, y), gap in zip(points, gaps.min(axis=1), strict=True):
            # Dots cut by the crop border or squeezed against a neighbour by the tanh-warp cannot be located.
            if 8 <= x <= 151 and 8 <= y <= 151 and gap > 10:
                assert np.linalg.norm(_centroid(image, x, y) - [x, y]) < 0.35  # a half-pixel slip fails
                checked += 1
    assert checked > 2 * count


def test_masks_move_with_the_image_and_keep_their_labels():
    palette = np.random.default_rng(0).integers(40, 255, (11, 3)).astype(np.uint8)
    palette[0] = 0  # background is black, like the outside of the image
    blocks = np.random.default_rng(1).integers(0, 11, (6, 6))
    mask = np.kron(blocks, np.ones((16, 16), dtype=np.int64)).astype(np.uint8)  # 96 x 96 label blocks
    image = np.kron(palette[blocks], np.ones((32, 32, 1), dtype=np.uint8))  # the image at twice the size
    transform = build_train_transform("parsing", 128, "lapa", hflip_prob=0.0, photometric=False, warp_factor=0.0)
    mean, std = np.array(CLIP_MEAN)[:, None, None], np.array(CLIP_STD)[:, None, None]
    for seed in range(3):
        out = transform({"image": image, "mask": mask}, seed=seed)
        labels = out["labels"].numpy()
        assert out["labels"].dtype == torch.long and set(np.unique(labels)) <= set(range(11))
        pixels = (out["pixel_values"].numpy() * std + mean).transpose(1, 2, 0) * 255
        padded = np.pad(labels, 2, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5))
        interior = (windows == labels[..., None, None]).all(axis=(-1, -2))
        assert interior.mean() > 0.5
        assert np.abs(pixels[interior] - palette[labels[interior]]).max() < 2.0


# ---------------------------------------------------------------------------------------- reproducibility


def test_seeds_make_augmentations_reproducible():
    rng = np.random.default_rng(2)
    dense = {"image": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8), "landmarks": rng.uniform(20, 70, (19, 2))}
    transform = build_train_transform("landmarks", 96, "aflw", hflip_prob=0.5)
    first, again, other = transform(dense, seed=5), transform(dense, seed=5), transform(dense, seed=6)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first["pixel_values"], other["pixel_values"])
    # A seeded transform replays the same sequence; an unseeded one follows torch's global generator.
    one, two = (build_train_transform("landmarks", 96, "aflw", seed=3) for _ in range(2))
    torch.testing.assert_close([one(dense) for _ in range(2)], [two(dense) for _ in range(2)])
    unseeded = build_train_transform("landmarks", 96, "aflw")
    torch.manual_seed(11)
    replay = unseeded(dense)
    torch.manual_seed(11)
    torch.testing.assert_close(unseeded(dense), replay)

    face = {"image": rng.integers(0, 255, (120, 100, 3), dtype=np.uint8), "label": [1, 0, 1]}
    attributes = build_train_transform("multilabel", 112)
    outputs = [attributes(face, seed=seed)["pixel_values"] for seed in (1, 1, 2)]
    torch.testing.assert_close(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


# ----------------------------------------------------------------------------------- geometry and outputs


def test_tanh_warp_inverts():
    points = np.random.default_rng(3).uniform(-40, 170, (200, 2))  # also outside the crop
    for factor in (0.0, 0.3, 0.8):
        warped = tanh_warp(points, 128, factor)
        assert np.all((warped >= 0) & (warped <= 128)) or factor == 0.0
        np.testing.assert_allclose(tanh_unwarp(warped, 128, factor), points, atol=1e-6)
    # Original -> crop -> original, through a rotation and the LaPa warp factor.
    matrix = rotate_scale_matrix(0.3, 0.9, (4.0, -3.0), 128)
    inside = np.random.default_rng(4).uniform(30, 100, (50, 2))
    np.testing.assert_allclose(points_to_original(points_to_crop(inside, matrix, 128, 0.8), matrix, 128, 0.8), inside)


def test_warping_back_recovers_the_image():
    ys, xs = np.mgrid[:80, :80]
    image = torch.from_numpy(np.stack([np.sin(xs / 9.0), np.cos(ys / 7.0)])).float()
    matrix = rotate_scale_matrix(0.2, 1.1, (2.0, 1.0), 80)
    for factor in (0.0, 0.8):
        back = crop_to_original(warp_to_crop(image, matrix, 80, factor), matrix, (80, 80), factor)
        torch.testing.assert_close(back[:, 25:55, 25:55], image[:, 25:55, 25:55], atol=0.03, rtol=0)


def test_similarity_estimation_and_lapa_alignment():
    source = np.random.default_rng(5).uniform(0, 100, (5, 2))
    truth = rotate_scale_matrix(-0.4, 1.7, (11.0, -6.0), 64)
    np.testing.assert_allclose(similarity_matrix(source, source @ truth[:2, :2].T + truth[:2, 2]), truth, atol=1e-9)
    target = (FACE_TEMPLATE + 1) * 511 / 2
    np.testing.assert_allclose(
        face_align_matrix(target / 2 + 30, 512) @ np.append(target[0] / 2 + 30, 1), [*target[0], 1]
    )


def test_eval_transforms_are_deterministic_crops():
    rng = np.random.default_rng(6)
    points = rng.uniform(30, 90, (68, 2))
    sample = {"image": np.full((120, 120, 3), 200, np.uint8), "landmarks": points, "box": [10.0, 10.0, 110.0, 110.0]}
    transform = build_eval_transform("landmarks", 128, "300w")
    out = transform(sample)
    torch.testing.assert_close(out, transform(sample))
    matrix = out["transform_matrix"].numpy()
    # 300W evaluation: the box fills the crop, zoomed out by scale mu 0.8 about the centre.
    # x -> 0.8 * ((x - 10) / 100 * 128 - 0.5 - 63.5) + 63.5 = 1.024 x + 2.06
    expected = np.array([[1.024, 0, 2.06], [0, 1.024, 2.06], [0, 0, 1]])
    np.testing.assert_allclose(matrix, expected, atol=1e-9)
    np.testing.assert_allclose(out["labels"].numpy(), points_to_crop(points, matrix, 128), atol=1e-4)
    np.testing.assert_allclose(points_to_original(out["labels"].numpy(), matrix, 128), points, atol=1e-4)
    centre = out["pixel_values"][:, 64, 64]
    torch.testing.assert_close(centre, (200 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))

    face = build_eval_transform("classification")({"image": np.full((90, 70, 3), 255, np.uint8), "label": 3})
    assert face["pixel_values"].shape == (3, 112, 112) and face["labels"].dtype == torch.long
    torch.testing.assert_close(face["pixel_values"], torch.ones(3, 112, 112))  # (1 - 0.5) / 0.5
    flipped = build_train_transform("embedding", 112, hflip_prob=1.0)
    image = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    plain = build_eval_transform("embedding")({"image": image, "label": 0})["pixel_values"]
    torch.testing.assert_close(flipped({"image": image, "label": 0}, seed=0)["pixel_values"], plain.flip(-1))


def test_builders_validate_and_default():
    with pytest.raises(ValueError):
        build_train_transform("pose", 512)
    assert build_train_transform("parsing", dataset="parsing_lapa").warp_factor == 0.8
    assert build_train_transform("parsing", dataset="celebam").warp_factor == 0.0
    assert build_train_transform("landmarks", dataset="align_aflw").affine.scale_mu == 1.0
    assert build_train_transform("landmarks", dataset="cofw").affine == RandomAffine(0.05, 0.174, 0.1, 0.8)
    assert build_train_transform("landmarks").hflip_prob == 0.0  # the official dense recipe does not flip
    assert set(LANDMARK_MIRRORS) == {"300w", "wflw", "cofw", "aflw"}


def test_attribute_training_crops_the_central_square_as_timm():
    image = np.zeros((218, 178, 3), np.uint8)  # CelebA's size: timm falls back to the central 178 x 178 square
    image[:20], image[-20:] = 255, 255  # bands outside the square
    transform = build_train_transform("multilabel", 112)
    centre = transform.pipeline.transforms[0](image_to_tensor(image))
    assert centre.shape == (3, 178, 178) and int(centre.max()) == 0
    out = transform({"image": image, "label": np.zeros(40, int)}, seed=0)
    assert out["pixel_values"].shape == (3, 112, 112) and out["labels"].dtype == torch.long
    assert build_train_transform("age", 112)({"image": image, "label": 31}, seed=0)["labels"].dtype == torch.float32
