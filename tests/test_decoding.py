"""The shared decodings of raw outputs on inputs whose answer is known by construction, and the image processor's
post-processing and the metrics' reduction giving the same values for the same raw outputs."""

import math

import numpy as np
import pytest
import torch

from faceptor import FaceptorConfig, FaceptorImageProcessor
from faceptor.processing.decoding import (
    age_probabilities,
    attribute_labels,
    attribute_probabilities,
    class_labels,
    class_probabilities,
    expected_age,
    landmark_points,
    normalized_embeddings,
    parsing_labels,
)
from faceptor.processing.geometry import normalized_to_pixels
from faceptor.train.metrics import preprocess_logits_for_task, verification_scores
from faceptor.train.metrics.tasks import prepare_inputs

BASE_SPECS = FaceptorConfig.from_preset("faceptor-base").task_specs  # a task of each kind

PEAK = 30.0  # sigmoid(+-30) is 1 or 1e-13: a logit map this peaked is one-hot after the activation


def peaked_maps(size: int, peaks: list[tuple[int, int]]) -> torch.Tensor:
    """`(1, len(peaks), size, size)` landmark logits, each map one-hot at its (x, y) pixel."""
    maps = torch.full((1, len(peaks), size, size), -PEAK)
    for index, (x, y) in enumerate(peaks):
        maps[0, index, y, x] = PEAK
    return maps


# ---------------------------------------------------------------------------------------------- landmarks


def test_a_one_hot_heatmap_decodes_to_its_pixel():
    points = landmark_points(peaked_maps(16, [(12, 4), (0, 15)]))
    torch.testing.assert_close(points[0], torch.tensor([[12.5 / 16, 4.5 / 16], [0.5 / 16, 15.5 / 16]]))
    # On a crop of the map's own size, pixel centres sit at integers: the peak's pixel comes back.
    torch.testing.assert_close(normalized_to_pixels(points, 16)[0], torch.tensor([[12.0, 4.0], [0.0, 15.0]]))


def test_two_equal_peaks_decode_to_their_midpoint():
    maps = torch.full((1, 1, 8, 8), -PEAK)
    maps[0, 0, 2, 1] = maps[0, 0, 6, 5] = PEAK  # (x 1, y 2) and (x 5, y 6)
    torch.testing.assert_close(normalized_to_pixels(landmark_points(maps), 8)[0, 0], torch.tensor([3.0, 4.0]))


def test_normalized_points_map_into_a_crop_anywhere_in_the_image():
    points = torch.tensor([[[0.5 / 4, 0.5 / 4], [0.5, 0.5]]])  # the first pixel's centre and the crop's centre
    pixels = normalized_to_pixels(points, torch.tensor(100.0), torch.tensor([30.0, -20.0]))
    torch.testing.assert_close(pixels[0], torch.tensor([[30 + 12.5 - 0.5, -20 + 12.5 - 0.5], [79.5, 29.5]]))


def test_half_precision_decodes_in_float32_and_float64_keeps_its_precision():
    maps = peaked_maps(8, [(3, 5)])
    assert landmark_points(maps.half()).dtype == torch.float32
    assert landmark_points(maps.double()).dtype == torch.float64
    torch.testing.assert_close(landmark_points(maps.half()), landmark_points(maps))


# ------------------------------------------------------------------------------------------------ parsing


def test_parsing_labels_are_the_arg_max_at_the_logits_resolution():
    logits = torch.zeros(1, 3, 4, 6)
    logits[0, 1, :, :3] = 5.0  # class 1 on the left half
    logits[0, 2, :, 3:] = 5.0  # class 2 on the right half
    logits[0, :, 0, 0] = 0.0  # a tie between all classes: the first wins
    expected = torch.tensor([[1, 1, 1, 2, 2, 2]] * 4)
    expected[0, 0] = 0
    labels = parsing_labels(logits)
    assert labels.dtype == torch.int64
    torch.testing.assert_close(labels[0], expected)
    torch.testing.assert_close(parsing_labels(logits, (4, 6)), labels)


def test_parsing_labels_upsample_to_the_requested_size():
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 1, :, :2] = 5.0
    logits[:, 2, :, 2:] = 5.0
    labels = parsing_labels(logits, (8, 16))
    assert labels.shape == (2, 8, 16)
    assert (labels[:, :, :8] == 1).all() and (labels[:, :, 8:] == 2).all()


# ---------------------------------------------------------------------------------------------------- age


def test_age_logits_peaked_at_37_give_37():
    logits = torch.full((3, 101), -PEAK)
    logits[0, 37] = PEAK
    logits[1, [20, 40]] = PEAK  # two equal peaks: their mean
    logits[2] = 0.0  # flat: the mean of 0..100
    torch.testing.assert_close(expected_age(logits), torch.tensor([37.0, 30.0, 50.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(age_probabilities(logits).sum(dim=1), torch.ones(3))
    torch.testing.assert_close(age_probabilities(logits)[2], torch.full((101,), 1 / 101))


# ---------------------------------------------------------------------------- classification and attributes


def test_class_probabilities_and_labels():
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]])
    torch.testing.assert_close(class_probabilities(logits), torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    torch.testing.assert_close(class_labels(logits), torch.tensor([1, 0]))  # a tie: the first class


def test_attribute_probabilities_and_labels():
    logits = torch.tensor([[0.0, 100.0, -100.0, 1e-10, -1e-10]])
    torch.testing.assert_close(attribute_probabilities(logits), torch.tensor([[0.5, 1.0, 0.0, 0.5, 0.5]]))
    # The sign of the logit decides, also where the probability rounds to exactly one half.
    torch.testing.assert_close(attribute_labels(logits), torch.tensor([[0, 1, 0, 1, 0]]))


# ------------------------------------------------------------------------------------------------ identity


def test_embeddings_are_unit_length_and_zero_stays_zero():
    embeddings = normalized_embeddings(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]))
    torch.testing.assert_close(embeddings, torch.tensor([[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]]))


# ------------------------------------------------- one decoding: the image processor and the metrics agree


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


def through_processor(kind: str, raw: torch.Tensor, size: int = 64):
    """What `FaceptorImageProcessor.post_process` (the pipeline's decoding) makes of `raw` outputs of a task of
    `kind`, each face the whole of a `size` x `size` image."""
    spec = next(spec for spec in BASE_SPECS.values() if spec.kind == kind)
    decoded = FaceptorImageProcessor().post_process({spec.name: raw}, [spec], [(size, size)] * len(raw))
    return decoded[spec.name]


def test_landmarks_agree_between_processor_and_metrics(rng):
    size = 64
    maps = torch.randn(3, 19, 16, 16, generator=rng) * 4
    processed = through_processor("landmarks", maps, size).numpy()
    reduced = preprocess_logits_for_task("landmarks", size)(maps, None)
    from_raw, _ = prepare_inputs("landmarks", maps.numpy(), np.zeros((3, 19, 2)), size)
    np.testing.assert_array_equal(processed, reduced.numpy())
    np.testing.assert_array_equal(processed, from_raw)


def test_parsing_agrees_between_processor_and_metrics(rng):
    size = 32
    logits = torch.randn(2, 11, 8, 8, generator=rng)
    processed = np.stack([label_map.numpy() for label_map in through_processor("parsing", logits, size)])
    references = np.zeros((2, size, size), dtype=np.int64)
    reduced = preprocess_logits_for_task("parsing")(logits, torch.from_numpy(references))
    from_raw, _ = prepare_inputs("parsing", logits.numpy(), references)
    np.testing.assert_array_equal(processed, reduced.numpy())
    np.testing.assert_array_equal(processed, from_raw)


def test_age_agrees_between_processor_and_metrics(rng):
    logits = torch.randn(5, 101, generator=rng) * 3
    processed = through_processor("age", logits).numpy()
    reduced = preprocess_logits_for_task("age")(logits, None)
    from_raw, _ = prepare_inputs("age", logits.numpy(), np.zeros(5))
    np.testing.assert_array_equal(processed, reduced.numpy())
    np.testing.assert_allclose(processed, from_raw, rtol=1e-6)  # the metrics decode numpy logits in float64


def test_classes_and_attributes_agree_between_processor_and_metrics(rng):
    logits = torch.randn(6, 7, generator=rng)
    names = [f"class_{index}" for index in range(7)]
    processed = [names[index] for index in through_processor("classification", logits).argmax(dim=1).tolist()]
    reduced = preprocess_logits_for_task("classification")(logits, None)
    from_raw, _ = prepare_inputs("classification", logits.numpy(), np.zeros(6))
    assert processed == [names[index] for index in reduced.tolist()] == [names[index] for index in from_raw]

    attribute_logits = torch.randn(4, 40, generator=rng)
    names = [f"attribute_{index}" for index in range(40)]
    processed = (through_processor("multilabel", attribute_logits) > 0.5).int().numpy()
    reduced = preprocess_logits_for_task("multilabel")(attribute_logits, None)
    from_raw, _ = prepare_inputs("multilabel", attribute_logits.numpy(), np.zeros((4, 40)))
    np.testing.assert_array_equal(processed, reduced.numpy())
    np.testing.assert_array_equal(processed, from_raw)


def test_embeddings_agree_between_processor_and_verification(rng):
    first, second = torch.randn(40, 16, generator=rng) * 5, torch.randn(40, 16, generator=rng) * 5
    issame = np.arange(40) % 2 == 0
    processed = [through_processor("embedding", side).numpy() for side in (first, second)]
    np.testing.assert_allclose(processed[0], normalized_embeddings(first.double()).numpy(), rtol=1e-6)
    # The verification metric normalises raw embeddings with the same function: already normalised ones score alike.
    assert verification_scores(*processed, issame) == pytest.approx(verification_scores(first, second, issame))
