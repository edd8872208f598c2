import math

import numpy as np
import pytest
import torch

from faceptor.train.losses import (
    CosFaceLoss,
    FaceptorLoss,
    age_label_distribution,
    age_loss,
    attribute_loss,
    expression_loss,
    gaussian_heatmaps,
    landmark_loss,
    parsing_loss,
    teacher_embedding_loss,
)


def bce(logit, target):
    """Binary cross-entropy of one logit, in the overflow-free form."""
    return max(logit, 0.0) - logit * target + math.log1p(math.exp(-abs(logit)))


def test_gaussian_heatmap_values_and_radius():
    points = torch.tensor([[[2.5 / 16, 3.5 / 16]]])  # the centre of pixel (x=2, y=3) on a 16x16 map
    heatmap = gaussian_heatmaps(points, 16, 16, radius=5.0)[0, 0]
    assert heatmap[3, 2] == pytest.approx(1.0)
    assert heatmap[3, 3] == pytest.approx(math.exp(-8 / 25))
    assert heatmap[7, 5] == pytest.approx(math.exp(-8 * 25 / 25))  # distance exactly 5: still inside
    assert heatmap[3, 8] == 0 and heatmap[10, 2] == 0  # beyond the radius


def test_landmark_loss_by_hand():
    maps = torch.full((1, 1, 4, 4), -50.0)
    maps[0, 0, 1, 2] = 50.0  # the soft-argmax lands on pixel (x=2, y=1): normalised (2.5/4, 1.5/4)
    points = torch.tensor([[[24.5, 8.5]]])  # in a 32-px input: normalised (25/32, 9/32)
    parts = landmark_loss(maps, points, input_size=32)
    distance = math.hypot(25 / 32 - 2.5 / 4, 9 / 32 - 1.5 / 4)
    assert parts["coordinates"].item() == pytest.approx(distance, abs=1e-6)
    target = gaussian_heatmaps(torch.tensor([[[25 / 32, 9 / 32]]]), 4, 4)[0, 0]
    expected = np.mean([bce(maps[0, 0, y, x].item(), target[y, x].item()) for y in range(4) for x in range(4)])
    assert parts["heatmap"].item() == pytest.approx(expected, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(distance + expected, rel=1e-5)


def test_parsing_loss_is_per_pixel_cross_entropy():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    log_probabilities = torch.log_softmax(logits, dim=1)
    expected = -log_probabilities.gather(1, labels[:, None]).mean()
    assert parsing_loss(logits, labels)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    upsampled = parsing_loss(logits, torch.zeros(2, 8, 8, dtype=torch.long))["loss"]
    assert upsampled.ndim == 0 and upsampled > 0  # logits are upsampled to the label size


def test_age_loss_dldl_v2_by_hand():
    logits = torch.zeros(1, 101)  # sigmoid 0.5 everywhere -> uniform 1/101
    ages = torch.tensor([30.0])
    bins = np.arange(101)
    density = np.exp(-((bins - 30) ** 2) / 8) / (math.sqrt(2 * math.pi) * 2)
    target = density / density.sum()
    kl = float(np.sum(target * (np.log(target) - np.log(1 / 101))))
    parts = age_loss(logits, ages)
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert parts["l1"].item() == pytest.approx(20.0, rel=1e-5)  # expected age 50 vs 30
    np.testing.assert_allclose(age_label_distribution(ages)[0].numpy(), target, rtol=1e-5, atol=1e-12)


def test_expression_and_attribute_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    expected = -math.log(math.exp(0.0) / sum(math.exp(v) for v in (2.0, 0.0, -1.0)))
    assert expression_loss(logits, torch.tensor([1]))["loss"].item() == pytest.approx(expected, rel=1e-6)
    attribute_logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    targets = torch.tensor([[1, 0, -1], [0, 1, 1]])  # -1: unknown, ignored
    by_hand = (bce(1.0, 1) + bce(-2.0, 0) + bce(0.0, 0) + bce(3.0, 1) + bce(-1.0, 1)) / 2
    assert attribute_loss(attribute_logits, targets)["loss"].item() == pytest.approx(by_hand, rel=1e-6)
    ratios = [0.2, 0.5, 0.9]
    weighted = (
        bce(1.0, 1) * math.exp(0.8)
        + bce(-2.0, 0) * math.exp(0.5)
        + bce(0.0, 0) * math.exp(0.2)
        + bce(3.0, 1) * math.exp(0.5)
        + bce(-1.0, 1) * math.exp(0.1)
    ) / 2
    assert attribute_loss(attribute_logits, targets, ratios)["loss"].item() == pytest.approx(weighted, rel=1e-6)


def test_cosface_by_hand():
    loss = CosFaceLoss(embedding_size=2, num_classes=2, scale=64.0, margin=0.4)
    with torch.no_grad():
        loss.classifier.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    embeddings = torch.tensor([[3.0, 4.0]])  # cosines 0.6 and 0.8
    logits = [64 * (0.6 - 0.4), 64 * 0.8]
    expected = -math.log(math.exp(logits[0]) / (math.exp(logits[0]) + math.exp(logits[1])))
    assert loss(embeddings, torch.tensor([0]))["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_total_is_the_weighted_mean_of_equation_8():
    specs = {
        "age": {"name": "age", "kind": "age", "input_size": 32},
        "expression": {"name": "expression", "kind": "classification", "input_size": 32},
        "identity": {"name": "identity", "kind": "embedding", "input_size": 32},
    }
    losses = FaceptorLoss(specs, {"age": 6.0, "expression": 1.0, "identity": 5.0}, {"identity": 3}, embedding_size=4)
    outputs = {"age": torch.randn(2, 101), "expression": torch.randn(3, 7), "identity": torch.randn(2, 4)}
    labels = {
        "age": torch.tensor([20.0, 40.0]),
        "expression": torch.tensor([0, 3, 6]),
        "identity": torch.tensor([0, 2]),
    }
    total, per_task = losses(outputs, labels)
    assert per_task["age"].item() == pytest.approx(age_loss(outputs["age"], labels["age"])["loss"].item())
    expected = (6 * per_task["age"] + per_task["expression"] + 5 * per_task["identity"]) / 12
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="number of identities"):
        FaceptorLoss({"identity": specs["identity"]}, {"identity": 1.0})


def test_teacher_embedding_loss_is_zero_only_for_the_teachers_directions():
    teacher = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    assert teacher_embedding_loss(3 * teacher, teacher)["loss"].item() == pytest.approx(0, abs=1e-6)
    student = torch.randn(6, 8, requires_grad=True)
    parts = teacher_embedding_loss(student, teacher)
    assert parts["direction"] > 0.1 and parts["relation"] > 0
    parts["loss"].backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # An identity task learning from a teacher owns no CosFace class matrix.
    losses = FaceptorLoss({"recog": {"kind": "embedding", "input_size": 32}}, {"recog": 1.0}, {}, 8, ["recog"])
    assert not list(losses.parameters())
