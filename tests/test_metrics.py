"""Metrics against hand-computed values, degenerate cases and literal re-statements of the official loops."""

import math

import numpy as np
import pytest
import torch

from faceptor.processing.decoding import expected_age
from faceptor.task_presets import CELEBAMASK_HQ_CLASSES, LAPA_CLASSES
from faceptor.train.metrics import (
    LANDMARK_PROTOCOLS,
    ParsingConfusion,
    age_scores,
    attribute_scores,
    canonical_dataset,
    ced_auc_fr,
    compute_metrics_for_task,
    confusion_matrix,
    expression_scores,
    kfold_bounds,
    landmark_protocol,
    landmark_scores,
    metric_for_task,
    parsing_scores,
    preprocess_logits_for_task,
    split_pairs,
    verification_scores,
)
from faceptor.train.metrics.landmarks import simpson

# ---------------------------------------------------------------------------------------------- landmarks


def _300w_reference() -> np.ndarray:
    """68 points: outer eye corners 36 = (0, 0) and 45 = (10, 0); eye means (0, 0) and (8, 0)."""
    points = np.zeros((68, 2))
    points[42:48, 0] = 7.6
    points[45, 0] = 10.0
    return points


def test_nme_inter_ocular_and_inter_pupil_by_hand():
    reference = _300w_reference()
    references = np.stack([reference, reference])
    predictions = references + np.array([[[3.0, 4.0]], [[0.0, 1.0]]])  # errors 5 and 1 on every point
    scores = landmark_scores(predictions, references, dataset="300W")
    assert scores["nme_inter_ocular"] == pytest.approx((5 / 10 + 1 / 10) / 2)
    assert scores["nme_inter_pupil"] == pytest.approx((5 / 8 + 1 / 8) / 2)
    assert scores["nme"] == scores["nme_inter_ocular"]
    # One wrong point: its error spread over the 68 points.
    single = reference.copy()
    single[0] += [6.0, 8.0]
    assert landmark_scores(single, reference, "300w")["nme"] == pytest.approx(10 / 68 / 10)


def test_nme_box_and_diagonal_for_aflw():
    reference = np.random.default_rng(0).uniform(0, 50, (19, 2))
    predictions = reference + [3.0, 4.0]
    box = [10.0, 20.0, 50.0, 30.0]  # w 40, h 10
    scores = landmark_scores(predictions, reference, "align_aflw", boxes=[box])
    assert scores["nme_box"] == pytest.approx(5 / 20)
    assert scores["nme_diag"] == pytest.approx(5 / math.sqrt(1700))
    assert scores["nme"] == scores["nme_diag"]
    assert scores["nme_inter_ocular"] == pytest.approx(5 / np.linalg.norm(reference[6] - reference[11]))
    assert scores["nme_inter_pupil"] == pytest.approx(5 / np.linalg.norm(reference[7] - reference[10]))
    assert {"auc_box_7", "fr_box_7"} <= set(scores)
    with pytest.raises(ValueError, match="boxes"):
        landmark_scores(predictions, reference, "aflw")


def test_official_normalisation_ids():
    assert LANDMARK_PROTOCOLS["300w"].normalizations["inter_ocular"] == ((36,), (45,))
    assert LANDMARK_PROTOCOLS["300w"].normalizations["inter_pupil"] == (tuple(range(36, 42)), tuple(range(42, 48)))
    assert LANDMARK_PROTOCOLS["wflw"].normalizations == {"inter_ocular": ((60,), (72,)), "inter_pupil": ((96,), (97,))}
    assert LANDMARK_PROTOCOLS["cofw"].normalizations["inter_ocular"] == ((8,), (9,))
    assert LANDMARK_PROTOCOLS["aflw"].curve == ("box", 0.07)
    assert LANDMARK_PROTOCOLS["cofw"].curve == LANDMARK_PROTOCOLS["wflw"].curve == ("inter_ocular", 0.1)
    assert landmark_protocol(num_points=98) is LANDMARK_PROTOCOLS["wflw"]
    assert landmark_protocol("COFW") is LANDMARK_PROTOCOLS["cofw"]
    with pytest.raises(ValueError):
        landmark_protocol(num_points=5)


def test_auc_and_failure_rate():
    auc, fr = ced_auc_fr([0.0, 0.05, 0.2], 0.1)
    assert fr == pytest.approx(1 / 3)
    assert auc == pytest.approx((1 / 3 * 0.05 + 2 / 3 * 0.05) / 0.1, abs=1e-3)  # the CED's exact integral
    assert ced_auc_fr(np.zeros(7), 0.1) == pytest.approx((1.0, 0.0))  # all correct
    assert ced_auc_fr(np.full(7, 0.3), 0.1) == pytest.approx((0.0, 1.0))  # all failures


@pytest.mark.parametrize("threshold", [0.1, 0.07])
def test_auc_matches_the_official_loop(threshold):
    nmes = np.random.default_rng(1).gamma(2.0, 0.02, 300)
    xaxis = list(np.arange(0.0, threshold + 0.0001, 0.0001))
    ced = [float(np.count_nonzero([nmes <= x])) / len(nmes) for x in xaxis]  # the official lines
    scipy_integrate = pytest.importorskip("scipy.integrate")
    expected_auc = scipy_integrate.simpson(ced, x=xaxis) / threshold
    auc, fr = ced_auc_fr(nmes, threshold)
    assert auc == pytest.approx(expected_auc, abs=1e-12)
    assert fr == pytest.approx(1.0 - ced[-1])


def test_simpson_matches_scipy_for_odd_and_even_sample_counts():
    scipy_integrate = pytest.importorskip("scipy.integrate")
    x = np.cumsum(np.random.default_rng(2).uniform(0.5, 1.5, 12))
    for count in (3, 4, 7, 12):
        y = np.sin(x[:count])
        assert simpson(y, x[:count]) == pytest.approx(scipy_integrate.simpson(y, x=x[:count]), abs=1e-12)


# ------------------------------------------------------------------------------------------------ parsing

NAMES3 = ("background", "skin", "hair")


def test_parsing_f1_by_hand():
    reference = np.array([[0, 0, 1, 1], [0, 1, 1, 2], [2, 2, 2, 2]])
    prediction = np.array([[0, 1, 1, 1], [0, 1, 2, 2], [2, 2, 0, 2]])
    matrix = confusion_matrix(prediction, reference, 3)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 3, 1], [1, 0, 4]])  # rows: truth
    scores = parsing_scores(matrix, NAMES3)
    f1 = {"background": 2 * 2 / (3 + 3), "skin": 2 * 3 / (4 + 4), "hair": 2 * 4 / (5 + 5)}
    for name, value in f1.items():
        assert scores[f"f1_{name}"] == pytest.approx(value)
    assert scores["f1_mean"] == pytest.approx((f1["skin"] + f1["hair"]) / 2)  # background excluded
    assert scores["iou_hair"] == pytest.approx(4 / (5 + 5 - 4))
    assert scores["mean_iou"] == pytest.approx(np.mean([2 / 4, 3 / 5, 4 / 6]))
    assert scores["pixel_accuracy"] == pytest.approx(9 / 12)


def test_parsing_degenerate_cases():
    reference = np.array([[0, 1], [1, 1]])
    perfect = parsing_scores(confusion_matrix(reference, reference, 3), NAMES3)
    assert perfect["f1_mean"] == perfect["f1_skin"] == perfect["mean_iou"] == 1.0
    assert math.isnan(perfect["f1_hair"])  # absent from predictions and ground truth: skipped by the means
    wrong = parsing_scores(confusion_matrix((reference + 1) % 3, reference, 3), NAMES3)
    assert wrong["f1_mean"] == wrong["f1_skin"] == wrong["f1_hair"] == wrong["pixel_accuracy"] == 0.0
    # A class predicted but never true scores 0, not NaN.
    assert parsing_scores(confusion_matrix(np.full((2, 2), 2), np.full((2, 2), 1), 3), NAMES3)["f1_hair"] == 0.0
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_official_exclusion_is_background_only():
    for names in (CELEBAMASK_HQ_CLASSES, LAPA_CLASSES):
        matrix = np.diag(np.arange(1, len(names) + 1))
        skin = names.index("skin")
        matrix[skin, 0] = 5  # skin pixels predicted as background: only skin and background F1 drop
        scores = parsing_scores(matrix, names)
        f1 = [scores[f"f1_{name}"] for name in names[1:]]  # hair, cloth, ... all count
        assert scores["f1_mean"] == pytest.approx(np.mean(f1))
        assert scores["f1_hair"] == 1.0 and scores["f1_skin"] < 1.0


def test_parsing_confusion_streams_maps_of_any_size():
    rng = np.random.default_rng(3)
    pairs = [(rng.integers(0, 3, shape), rng.integers(0, 3, shape)) for shape in [(5, 7), (9, 4), (6, 6)]]
    streaming = ParsingConfusion(NAMES3)
    streaming.update(pairs[0][0], pairs[0][1])
    streaming.update([p for p, _ in pairs[1:]], [r for _, r in pairs[1:]])
    flat_prediction = np.concatenate([p.ravel() for p, _ in pairs])
    flat_reference = np.concatenate([r.ravel() for _, r in pairs])
    np.testing.assert_array_equal(streaming.matrix, confusion_matrix(flat_prediction, flat_reference, 3))
    assert streaming.num_images == 3
    assert streaming.compute() == parsing_scores(streaming.matrix, NAMES3)


# ------------------------------------------------------------------------------ age, expression, attributes


def test_age_scores_by_hand():
    scores = age_scores([20.0, 30.0, 41.0], [25.0, 30.0, 35.0])  # errors 5, 0, 6
    assert scores["mae"] == pytest.approx(11 / 3)
    assert scores["cs_5"] == pytest.approx(2 / 3)  # |error| <= 5 counts
    expected_eps = 1 - np.mean(np.exp(-np.array([25.0, 0.0, 36.0]) / 18))
    assert scores["epsilon_error"] == pytest.approx(expected_eps)
    assert age_scores([7.0], [7.0]) == {"mae": 0.0, "cs_5": 1.0, "epsilon_error": 0.0}


def test_expected_age_reads_logits_as_the_official_evaluator():
    logits = np.full((2, 101), -30.0)
    logits[0, 30] = 30.0
    logits[1] = 0.0  # uniform: the mean age
    np.testing.assert_allclose(expected_age(torch.from_numpy(logits)), [30.0, 50.0], atol=1e-6)


def test_expression_scores_by_hand():
    scores = expression_scores([0, 1, 1, 2], [0, 1, 2, 2], num_classes=3)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert scores["mean_class_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    # A class absent from the references: NaN recall, left out of the class mean.
    absent = expression_scores([0, 0, 1], [0, 0, 1], class_names=("a", "b", "c"))
    assert absent["accuracy"] == absent["mean_class_accuracy"] == 1.0 and math.isnan(absent["recall_c"])
    assert expression_scores([1, 2, 0], [0, 1, 2], num_classes=3)["accuracy"] == 0.0


def test_attribute_scores_by_hand():
    predictions = [[1, 0, 1], [0, 0, 1]]
    references = [[1, 1, 1], [0, -1, 0]]  # -1 (unknown) never matches, as the official binary_accuracy
    scores = attribute_scores(predictions, references, ["a", "b", "c"])
    assert scores["accuracy_a"] == 1.0 and scores["accuracy_b"] == 0.0 and scores["accuracy_c"] == 0.5
    assert scores["mean_accuracy"] == pytest.approx(0.5)
    assert attribute_scores(np.eye(2, dtype=int), np.eye(2, dtype=int))["mean_accuracy"] == 1.0


# ------------------------------------------------------------------------------------------- verification


def _insightface_accuracy(first, second, issame, folds=10):
    """insightface's calculate_roc, spelled out with loops."""
    normalize = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)  # noqa: E731
    dist = np.sum((normalize(first) - normalize(second)) ** 2, axis=1)
    thresholds = np.arange(0, 4, 0.01)
    bounds = kfold_bounds(len(dist), folds)
    accuracies, chosen = [], []
    for fold in range(folds):
        test = np.arange(bounds[fold], bounds[fold + 1])
        train = np.setdiff1d(np.arange(len(dist)), test)
        train_acc = [np.mean((dist[train] < t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        chosen.append(best)
        accuracies.append(np.mean((dist[test] < best) == issame[test]))
    return np.mean(accuracies), np.mean(chosen)


def test_kfold_bounds_match_unshuffled_kfold():
    np.testing.assert_array_equal(kfold_bounds(23, 10), [0, 3, 6, 9, 11, 13, 15, 17, 19, 21, 23])


def test_verification_separable_pairs_have_known_threshold():
    angles = np.random.default_rng(4).uniform(0, 2 * np.pi, 60)
    issame = np.arange(60) % 3 != 0
    # Squared distances 2 - 2 cos(delta): 0.5 for genuine pairs, 1.5 for impostors.
    delta = np.where(issame, np.arccos(1 - 0.5 / 2), np.arccos(1 - 1.5 / 2))
    first = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 3.0  # scale: L2-normalised away
    second = np.stack([np.cos(angles + delta), np.sin(angles + delta)], axis=1)
    scores = verification_scores(first, second, issame)
    assert scores["accuracy"] == 1.0 and scores["accuracy_std"] == 0.0
    assert scores["best_threshold"] == pytest.approx(0.51)  # first threshold above 0.5 (distance < threshold)


def test_verification_matches_the_insightface_loop():
    rng = np.random.default_rng(5)
    issame = rng.random(95) < 0.5
    first = rng.normal(size=(95, 16))
    second = np.where(issame[:, None], first + rng.normal(scale=1.2, size=(95, 16)), rng.normal(size=(95, 16)))
    accuracy, threshold = _insightface_accuracy(first, second, issame)
    scores = verification_scores(first, second, issame)
    assert 0.5 < scores["accuracy"] < 1.0
    assert scores["accuracy"] == pytest.approx(accuracy)
    assert scores["best_threshold"] == pytest.approx(threshold)
    interleaved = np.empty((190, 16))
    interleaved[0::2], interleaved[1::2] = first, second
    np.testing.assert_array_equal(split_pairs(interleaved)[1], second)


# ------------------------------------------------------------------------------------ evaluate wrappers


def test_dataset_aliases():
    assert canonical_dataset("align_300w") == canonical_dataset("iBUG-300W") == "300w"
    assert canonical_dataset("parsing_celebam") == canonical_dataset("CelebAMask-HQ") == "celebamask_hq"
    assert canonical_dataset("agedb_30") == "agedb30"


def test_evaluate_metrics_equal_their_numpy_cores():
    rng = np.random.default_rng(6)
    references = rng.uniform(0, 100, (6, 98, 2))
    predictions = references + rng.normal(0, 2, references.shape)
    metric = metric_for_task("landmarks", "align_wflw", keep_in_memory=True)
    metric.add_batch(predictions=predictions[:4], references=references[:4])
    metric.add_batch(predictions=predictions[4:], references=references[4:])
    assert metric.compute() == pytest.approx(landmark_scores(predictions, references, "wflw"))

    aflw = metric_for_task("landmarks", "aflw", keep_in_memory=True)
    boxes = np.tile([0.0, 0.0, 80.0, 60.0], (6, 1))
    truth = references[:, :19]
    assert aflw.compute(predictions=predictions[:, :19], references=truth, boxes=boxes) == pytest.approx(
        landmark_scores(predictions[:, :19], truth, "aflw", boxes=boxes)
    )

    maps = [(rng.integers(0, 11, (8, 8)), rng.integers(0, 11, (8, 8))) for _ in range(3)]
    parsing = metric_for_task("parsing", "lapa", keep_in_memory=True)
    parsing.add_batch(predictions=np.stack([p for p, _ in maps[:2]]), references=np.stack([r for _, r in maps[:2]]))
    parsing.add(prediction=maps[2][0], reference=maps[2][1])
    confusion = ParsingConfusion(LAPA_CLASSES)
    confusion.update([p for p, _ in maps], [r for _, r in maps])
    result = parsing.compute()
    assert result.pop("num_images") == 3
    assert result == pytest.approx(confusion.compute(), nan_ok=True)

    assert metric_for_task("age", keep_in_memory=True).compute(predictions=[20.0, 30.0], references=[25.0, 30.0]) == (
        pytest.approx(age_scores([20.0, 30.0], [25.0, 30.0]))
    )
    expression = metric_for_task("classification", keep_in_memory=True).compute(predictions=[0, 3], references=[0, 2])
    assert expression["accuracy"] == 0.5 and len(expression["confusion_matrix"]) == 7
    attributes = rng.integers(0, 2, (5, 40))
    attribute = metric_for_task("multilabel", keep_in_memory=True).compute(
        predictions=attributes, references=attributes
    )
    assert attribute["mean_accuracy"] == 1.0 and "accuracy_Smiling" in attribute
    pairs = rng.normal(size=(20, 2, 8))
    issame = rng.random(20) < 0.5
    verification = metric_for_task("embedding", keep_in_memory=True).compute(predictions=pairs, references=issame)
    assert verification == pytest.approx(verification_scores(pairs[:, 0], pairs[:, 1], issame))
    with pytest.raises(ValueError):
        metric_for_task("pose")


def test_trainer_adapters_take_raw_outputs():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(6, 7)).astype(np.float32)
    labels = logits.argmax(axis=1)
    assert compute_metrics_for_task("classification", keep_in_memory=True)((logits, labels))["accuracy"] == 1.0

    attribute_logits = rng.normal(size=(4, 40))
    scores = compute_metrics_for_task("multilabel", keep_in_memory=True)((attribute_logits, attribute_logits > 0))
    assert scores["mean_accuracy"] == 1.0

    parsing_logits = torch.randn(2, 11, 4, 4)
    reduce = preprocess_logits_for_task("parsing")
    label_maps = reduce(parsing_logits, torch.zeros(2, 8, 8, dtype=torch.long))
    assert label_maps.shape == (2, 8, 8)
    scores = compute_metrics_for_task("parsing", "lapa", keep_in_memory=True)((parsing_logits.numpy(), label_maps))
    assert scores["pixel_accuracy"] == 1.0 and "confusion_matrix" not in scores

    heatmaps = torch.full((2, 19, 16, 16), -20.0)
    heatmaps[:, :, 5, 9] = 20.0  # every point at heatmap pixel (x 9, y 5) -> input pixels (9.5, 5.5) * 32 - 0.5
    points = preprocess_logits_for_task("landmarks")(heatmaps, None)
    torch.testing.assert_close(points[0, 0], torch.tensor([9.5 * 32 - 0.5, 5.5 * 32 - 0.5]))
    scores = compute_metrics_for_task("landmarks", "aflw", keep_in_memory=True)((heatmaps.numpy(), points.numpy()))
    assert scores["nme"] == pytest.approx(0.0, abs=1e-6) and scores["fr_box_7"] == 0.0
