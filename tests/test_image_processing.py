import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor

from faceptor import FaceptorConfig, FaceptorImageProcessor
from faceptor.processing.image_processing_faceptor import square_crop


def coordinate_image(height=200, width=300):
    """Red channel = x, green channel = y (mod 256), so a crop shows where it came from."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs % 256, ys % 256, np.full_like(xs, 128)], axis=-1).astype(np.uint8)


def test_crops_are_squares_around_the_box_in_original_pixels():
    processor = FaceptorImageProcessor(dense_size=64, face_size=32)
    out = processor(coordinate_image(), boxes=[[40, 50, 120, 110]])
    assert out["pixel_values_dense"].shape == (1, 3, 64, 64) and out["pixel_values_face"].shape == (1, 3, 32, 32)
    left, top, side = out["crops_dense"][0].tolist()
    assert (left, top, side) == (30, 30, 100)  # centre (80, 80), side 80 * 1.25
    assert out["crops_face"][0].tolist() == list(square_crop([40, 50, 120, 110], 1.3))
    # Undo the CLIP normalisation and read the coordinates back at the crop's centre pixel.
    mean = torch.tensor(processor.dense_mean)[:, None, None]
    std = torch.tensor(processor.dense_std)[:, None, None]
    pixels = (out["pixel_values_dense"][0] * std + mean) * 255
    centre_x, centre_y = pixels[0, 32, 32].item(), pixels[1, 32, 32].item()
    assert abs(centre_x - 80) < 2 and abs(centre_y - 80) < 2


def test_whole_image_mode_pads_to_a_square_and_keeps_the_aspect():
    processor = FaceptorImageProcessor(dense_size=64, face_size=32)
    out = processor(coordinate_image(100, 60), boxes=None)
    assert out["crops_dense"][0].tolist() == [-20, 0, 100]
    assert out["image_sizes"].tolist() == [[100, 60]] and out["face_boxes"].tolist() == [[0, 0, 60, 100]]
    mean = torch.tensor(processor.dense_mean)[:, None, None]
    std = torch.tensor(processor.dense_std)[:, None, None]
    pixels = (out["pixel_values_dense"][0] * std + mean) * 255
    assert pixels[:, :, :5].abs().max() < 1.0  # the padding left of the image is black


def test_bad_boxes_raise():
    processor = FaceptorImageProcessor()
    with pytest.raises(ValueError, match="x1 > x0"):
        processor(coordinate_image(), boxes=[[50, 50, 40, 90]])
    with pytest.raises(ValueError, match="boxes for 2 images"):
        processor([coordinate_image()], boxes=[None, None])


def test_landmarks_go_back_to_image_pixels():
    crops = torch.tensor([[30.0, 30.0, 100.0]])
    heatmaps = torch.full((1, 2, 16, 16), -30.0)
    heatmaps[0, 0, 4, 12] = 30.0  # row 4, column 12 of a 16x16 map
    heatmaps[0, 1, 15, 0] = 30.0
    points = FaceptorImageProcessor.post_process_landmarks(heatmaps, crops)[0]
    expected = np.array([[30 + (12.5 / 16) * 100 - 0.5, 30 + (4.5 / 16) * 100 - 0.5],
                         [30 + (0.5 / 16) * 100 - 0.5, 30 + (15.5 / 16) * 100 - 0.5]])  # fmt: skip
    np.testing.assert_allclose(points, expected, atol=1e-3)


def test_parsing_label_map_has_the_image_size_and_background_outside_the_crop():
    logits = torch.zeros(1, 3, 8, 8)
    logits[0, 1, :, :4] = 5.0  # class 1 on the crop's left half
    logits[0, 2, :, 4:] = 5.0  # class 2 on its right half
    crops = torch.tensor([[10.0, -20.0, 80.0]])
    label_map = FaceptorImageProcessor.post_process_parsing(logits, crops, [(100, 120)])[0]
    assert label_map.shape == (100, 120) and label_map.dtype == np.uint8
    assert (label_map[:, :10] == 0).all() and (label_map[60:, :] == 0).all() and (label_map[:, 90:] == 0).all()
    assert (label_map[0:60, 10:45] == 1).all() and (label_map[0:60, 55:90] == 2).all()


def test_value_post_processing():
    age_logits = torch.full((2, 101), -20.0)
    age_logits[0, 37] = 20.0
    age_logits[1] = 0.0  # uniform -> the mean age 50
    np.testing.assert_allclose(FaceptorImageProcessor.post_process_age(age_logits), [37.0, 50.0], atol=1e-3)
    probabilities = FaceptorImageProcessor.post_process_classification(torch.tensor([[0.0, 2.0]]), ["a", "b"])[0]
    assert list(probabilities) == ["a", "b"] and abs(sum(probabilities.values()) - 1) < 1e-6
    assert probabilities["b"] > probabilities["a"]
    attributes = FaceptorImageProcessor.post_process_multilabel(torch.tensor([[0.0, 100.0]]), ["x", "y"])[0]
    assert attributes == pytest.approx({"x": 0.5, "y": 1.0})
    embeddings = FaceptorImageProcessor.post_process_embedding(torch.randn(3, 7))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_processor_round_trips_and_loads_as_remote_code(tmp_path):
    processor = FaceptorImageProcessor(dense_size=96, face_box_scale=1.5)
    processor.save_pretrained(tmp_path)
    FaceptorConfig().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_faceptor.FaceptorImageProcessor"}
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is FaceptorImageProcessor and loaded.dense_size == 96 and loaded.face_box_scale == 1.5
    image = coordinate_image()
    expected = processor(image, boxes=[[40, 50, 120, 110]])["pixel_values_dense"]
    np.save(tmp_path / "image.npy", image)
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoImageProcessor
        processor = AutoImageProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        assert "faceptor" not in sys.modules
        out = processor(np.load({str(tmp_path / "image.npy")!r}), boxes=[[40, 50, 120, 110]])
        assert torch.equal(out["pixel_values_dense"], torch.load({str(tmp_path / "expected.pt")!r}))
        print("processor-remote-ok")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processor-remote-ok" in result.stdout


def test_tanh_warped_parsing_crops_and_their_inverse():
    from faceptor.processing.geometry import tanh_unwarp, tanh_warp

    coordinates = torch.linspace(0.5, 63.5, 64)
    torch.testing.assert_close(tanh_unwarp(tanh_warp(coordinates, 64, 0.8), 64, 0.8), coordinates)
    processor = FaceptorImageProcessor(dense_size=64, face_size=32, parsing_warp_factor=0.8)
    image = coordinate_image(200, 300)
    out = processor(image, boxes=[[100, 60, 180, 140]], groups=("dense", "parsing"))
    assert out["pixel_values_parsing"].shape == (1, 3, 64, 64)
    mean = torch.tensor(processor.dense_mean)[:, None, None]
    std = torch.tensor(processor.dense_std)[:, None, None]
    warped = (out["pixel_values_parsing"][0] * std + mean) * 255
    plain = (out["pixel_values_dense"][0] * std + mean) * 255
    assert abs(warped[0, 32, 32] - 140) < 2 and abs(warped[1, 32, 32] - 100) < 2  # the box centre stays
    # The warp squeezes more of the image into the crop: its edge column reaches further out than the plain crop's.
    assert warped[0, 32, 0] < plain[0, 32, 0] - 10
    # Labels painted in image space, seen through the warped crop, come back where they were.
    truth = torch.zeros(200, 300, dtype=torch.long)
    truth[:, 140:] = 1
    truth[120:, :] = 2
    left, top, side = out["crops_parsing"][0].tolist()
    centres = torch.arange(64, dtype=torch.float32) + 0.5
    source = tanh_unwarp(centres, 64, 0.8) * side / 64
    xs = (left + source).long().clamp(0, 299)
    ys = (top + source).long().clamp(0, 199)
    logits = torch.nn.functional.one_hot(truth[ys][:, xs], 3).permute(2, 0, 1).float() * 10
    labels = FaceptorImageProcessor.post_process_parsing(logits[None], out["crops_parsing"], [(200, 300)], 0.8)[0]
    inside = slice(70, 130), slice(110, 170)  # around the face, where the warp keeps full resolution
    assert (labels[inside] == truth.numpy()[inside]).mean() > 0.95
