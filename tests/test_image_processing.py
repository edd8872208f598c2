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
from faceptor.processing.decoding import (
    attribute_probabilities,
    class_probabilities,
    expected_age,
    landmark_points,
    normalized_embeddings,
)
from faceptor.processing.image_processing_faceptor import square_crop


def coordinate_image(height=200, width=300):
    """Red channel = x, green channel = y (mod 256), so a crop shows where it came from."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs % 256, ys % 256, np.full_like(xs, 128)], axis=-1).astype(np.uint8)


def test_crops_are_squares_around_the_box_in_original_pixels():
    processor = FaceptorImageProcessor(dense_size=64, face_size=32)
    out = processor(coordinate_image(), boxes=[[40, 50, 120, 110]], groups=("dense", "face"))
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
    out = processor(coordinate_image(100, 60), boxes=None, groups=("dense", "face"))
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
    points = FaceptorImageProcessor.to_image_pixels(landmark_points(heatmaps), crops)[0].numpy()
    expected = np.array(
        [
            [30 + (12.5 / 16) * 100 - 0.5, 30 + (4.5 / 16) * 100 - 0.5],
            [30 + (0.5 / 16) * 100 - 0.5, 30 + (15.5 / 16) * 100 - 0.5],
        ]
    )
    np.testing.assert_allclose(points, expected, atol=1e-3)


def test_parsing_label_map_has_the_image_size_and_background_outside_the_crop():
    logits = torch.zeros(1, 3, 8, 8)
    logits[0, 1, :, :4] = 5.0  # class 1 on the crop's left half
    logits[0, 2, :, 4:] = 5.0  # class 2 on its right half
    crops = torch.tensor([[10.0, -20.0, 80.0]])
    label_map = FaceptorImageProcessor.parsing_label_maps(logits, crops, [(100, 120)])[0].numpy()
    assert label_map.shape == (100, 120) and label_map.dtype == np.uint8
    assert (label_map[:, :10] == 0).all() and (label_map[60:, :] == 0).all() and (label_map[:, 90:] == 0).all()
    assert (label_map[0:60, 10:45] == 1).all() and (label_map[0:60, 55:90] == 2).all()


def test_value_post_processing():
    age_logits = torch.full((2, 101), -20.0)
    age_logits[0, 37] = 20.0
    age_logits[1] = 0.0  # uniform -> the mean age 50
    np.testing.assert_allclose(expected_age(age_logits), [37.0, 50.0], atol=1e-3)
    probabilities = dict(zip(["a", "b"], class_probabilities(torch.tensor([[0.0, 2.0]]))[0].tolist(), strict=True))
    assert abs(sum(probabilities.values()) - 1) < 1e-6
    assert probabilities["b"] > probabilities["a"]
    attributes = attribute_probabilities(torch.tensor([[0.0, 100.0]]))[0].tolist()
    assert attributes == pytest.approx([0.5, 1.0])
    embeddings = normalized_embeddings(torch.randn(3, 7)).numpy()
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
    expected = processor(image, boxes=[[40, 50, 120, 110]])["pixel_values"]
    np.save(tmp_path / "image.npy", image)
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoImageProcessor
        processor = AutoImageProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        assert "faceptor" not in sys.modules
        out = processor(np.load({str(tmp_path / "image.npy")!r}), boxes=[[40, 50, 120, 110]])
        assert torch.equal(out["pixel_values"], torch.load({str(tmp_path / "expected.pt")!r}))
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
    labels = FaceptorImageProcessor.parsing_label_maps(logits[None], out["crops_parsing"], [(200, 300)], 0.8)[0].numpy()
    inside = slice(70, 130), slice(110, 170)  # around the face, where the warp keeps full resolution
    assert (labels[inside] == truth.numpy()[inside]).mean() > 0.95


def training_crops(images, crops, image_index, size):
    """The crops of the training transforms, face by face: zero-padded square, antialiased resize, uint8."""
    from torchvision.transforms.v2 import functional as tvF

    patches = [
        tvF.resize(tvF.crop(images[index], top, left, side, side), [size, size], antialias=True)
        for (left, top, side), index in zip(crops.round().int().tolist(), image_index.tolist(), strict=True)
    ]
    return torch.stack(patches).double()


def unnormalised(pixel_values, processor, group):
    mean = torch.tensor(getattr(processor, f"{group}_mean"), dtype=torch.float64)[:, None, None]
    std = torch.tensor(getattr(processor, f"{group}_std"), dtype=torch.float64)[:, None, None]
    return (pixel_values.double() * std + mean) * 255


@pytest.fixture(scope="module")
def photos():
    """The bundled photo and three of scikit-image's, `(3, H, W)` uint8."""
    from pathlib import Path

    from PIL import Image
    from skimage import data

    import faceptor

    bundled = np.asarray(Image.open(Path(faceptor.__file__).parents[1] / "assets" / "astronaut.jpg").convert("RGB"))
    arrays = [bundled, data.astronaut(), data.coffee(), data.chelsea()]
    return [torch.from_numpy(np.array(array)).permute(2, 0, 1) for array in arrays]


def crop_cases(photos):
    """(left, top, side) crops of every photo: inside, partly outside, the whole image padded to a square, tiny
    (1 and 3 px) and huge (3x the image) ones, and one of each at another photo to batch across images."""
    crops, image_index = [], []
    for index, photo in enumerate(photos):
        height, width = photo.shape[-2:]
        longer = max(height, width)
        for crop in [
            (width // 3, height // 4, min(height, width) // 2),  # inside
            (-40, -25, 180),  # over the top-left corner
            (width - 90, height // 2, 300),  # over the right edge
            ((width - longer) // 2, (height - longer) // 2, longer),  # the whole image
            (width // 2, height // 2, 1),
            (17, 23, 3),
            (-longer, -longer, 3 * longer),
        ]:
            crops.append(crop)
            image_index.append(index)
    return torch.tensor(crops, dtype=torch.float32), torch.tensor(image_index)


@pytest.mark.parametrize("group", ["dense", "face"])
def test_crops_equal_the_training_crops(photos, group, monkeypatch):
    processor = FaceptorImageProcessor()  # 512-px dense, 112-px face crops
    size = processor.group_settings(group)[0]
    crops, image_index = crop_cases(photos)
    pixels = unnormalised(processor.crop_faces(photos, crops, image_index, group), processor, group)
    expected = training_crops(photos, crops, image_index, size)
    # The same 0..255 values as the padded-square crops, to the grey level.
    assert (pixels - expected).abs().max() < 1e-3
    if group == "face":  # crops cut one per call (the smallest work budget) are the same crops
        from faceptor.processing import resampling

        monkeypatch.setattr(resampling, "CHUNK_BYTES", {"cpu": 1})
        one_by_one = unnormalised(processor.crop_faces(photos, crops, image_index, group), processor, group)
        torch.testing.assert_close(one_by_one, pixels)
        # Rows first (a tall strip's order, here for every crop taller than wide inside its image) rounds
        # differently: within one grey level.
        monkeypatch.setattr(resampling, "ROWS_FIRST_BYTES", 0)
        tall = crops.clone()
        tall[:, 0] -= tall[:, 2] * 0.45  # mostly left of the image: taller than wide inside it
        rows_first = unnormalised(processor.crop_faces(photos, tall, image_index, group), processor, group)
        difference = (rows_first - training_crops(photos, tall, image_index, size)).abs()
        assert difference.max() < 1.001 and 0 < difference.mean() < 0.1


def test_warped_parsing_crops_sample_the_image_as_grid_sample(photos):
    from faceptor.processing.geometry import tanh_unwarp

    processor = FaceptorImageProcessor(dense_size=96, parsing_warp_factor=0.8)
    crops, image_index = crop_cases(photos)
    warped = processor.warped_crops(photos, crops, image_index, 96)
    source = tanh_unwarp(torch.arange(96, dtype=torch.float32) + 0.5, 96, 0.8)
    for face, ((left, top, side), index) in enumerate(zip(crops.tolist(), image_index.tolist(), strict=True)):
        height, width = photos[index].shape[-2:]
        xs = (left + source * side / 96) / width * 2 - 1
        ys = (top + source * side / 96) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
        expected = torch.nn.functional.grid_sample(photos[index][None].float(), grid, align_corners=False)[0]
        torch.testing.assert_close(warped[face], expected, atol=0.05, rtol=0)


def test_a_box_wholly_outside_the_image_raises_naming_it():
    processor = FaceptorImageProcessor(dense_size=64, face_size=32)
    with pytest.raises(ValueError, match=r"Face box \[310\.0, 10\.0, 360\.0, 60\.0\] of image 0 lies wholly outside"):
        processor(coordinate_image(200, 300), boxes=[[310, 10, 360, 60]])
    with pytest.raises(ValueError, match="outside the image"):
        processor(coordinate_image(200, 300), boxes=[[-80, -60, 0, -1]])
    out = processor(coordinate_image(200, 300), boxes=[[-40, -40, 10, 10]])  # partly inside: cropped
    assert out["pixel_values"].shape == (1, 3, 64, 64)


@pytest.mark.parametrize("box", [[0, 0, 1e9, 1e9], [0, 0, float("inf"), 50], [-5000, 0, 10, 10]])
def test_a_box_many_times_the_image_raises_instead_of_allocating_its_window(box):
    # The resize weights of a crop grow with its window: a 1e9-pixel box once took the process down.
    processor = FaceptorImageProcessor(dense_size=64, face_size=32)
    with pytest.raises(ValueError, match="times the image's size"):
        processor(coordinate_image(200, 300), boxes=[box])
    largest = [0, 0, 8 * 300, 100]  # the largest box allowed, mostly padding: cropped
    assert processor(coordinate_image(200, 300), boxes=[largest])["pixel_values"].shape == (1, 3, 64, 64)


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak resident memory from /proc")
def test_a_60000_px_strip_crops_with_memory_in_proportion_to_the_crop():
    # Padding the whole-image crop of a 60000 x 100 strip to its square would take 10.8 GB; its crops take the
    # strip's pixels and the crops' (the peak resident memory while cropping, above what the process held before).
    def memory_mb(key: str) -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith(key))

    processor = FaceptorImageProcessor(parsing_warp_factor=0.8)
    processor(np.zeros((64, 64, 3), np.uint8), groups=("dense", "face", "parsing"))  # first calls allocate caches
    strip = np.full((100, 60000, 3), 200, np.uint8)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak resident memory (VmHWM) restarts from here
    before = memory_mb("VmRSS")
    out = processor(strip, groups=("dense", "face", "parsing"))
    assert memory_mb("VmHWM") - before < 200
    # The strip is the crop's middle row band: uniform grey along it, black (normalised) in the corner.
    dense = out["pixel_values_dense"][0]
    row = dense[:, 256]  # the strip's band, across the crop
    corner = float(dense[:, 0, 0].max())
    assert float(row.std(dim=1).max()) < 1e-3 and corner < -1.0 and float(row.mean()) > corner + 0.5


# ------------------------------------------------------------------- transformers' image-processor conventions


def test_per_call_overrides_of_attributes_and_common_kwargs_leave_the_processor_as_it_was():
    processor = FaceptorImageProcessor(dense_size=64, face_size=32)
    image = coordinate_image()
    assert processor(image, face_size=48)["pixel_values_face"].shape == (1, 3, 48, 48)
    common = processor(image, size={"height": 40, "width": 40})
    assert common["pixel_values"].shape == (1, 3, 40, 40) and common["pixel_values_face"].shape == (1, 3, 40, 40)
    raw = processor(image, image_mean=0.0, image_std=1 / 255, face_std=[2.0, 2.0, 2.0])
    plain = processor(image)
    mean, std = torch.tensor(processor.dense_mean)[:, None, None], torch.tensor(processor.dense_std)[:, None, None]
    torch.testing.assert_close(raw["pixel_values"] / 255, plain["pixel_values"] * std + mean)  # 0..255 pixels
    torch.testing.assert_close(raw["pixel_values_face"], (plain["pixel_values_face"] * 0.5 + 0.5) / 2)
    assert processor.face_size == 32 and processor.dense_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    with pytest.raises(TypeError, match="do_pad"):
        processor(image, do_pad=True)  # a common kwarg without meaning for face crops is refused, not ignored
    with pytest.raises(ValueError, match="square"):
        processor(image, size={"height": 32, "width": 48})


def test_every_layout_and_channel_count_gives_the_same_crops_as_numpy_and_pil():
    from PIL import Image

    processor = FaceptorImageProcessor(dense_size=32, face_size=16)
    rng = np.random.default_rng(0)
    for channels in (1, 3, 4):
        last = rng.integers(0, 256, (40, 100, channels), dtype=np.uint8)
        first = np.ascontiguousarray(last.transpose(2, 0, 1))
        pil = Image.fromarray(last[..., 0] if channels == 1 else last)
        expected = processor(pil)["pixel_values"]
        for image in (last, first, torch.from_numpy(last), torch.from_numpy(first)):
            assert torch.equal(processor(image)["pixel_values"], expected), (channels, type(image), image.shape)
    # An explicit layout, and the channels kept (one mean and std per channel) without RGB conversion.
    four = rng.integers(0, 256, (40, 100, 4), dtype=np.uint8)
    kept = processor(
        four, do_convert_rgb=False, input_data_format="channels_last", image_mean=[0] * 4, image_std=[1] * 4
    )
    assert kept["pixel_values"].shape == (1, 4, 32, 32)
    with pytest.raises(ValueError, match="4 channels"):
        processor(four, do_convert_rgb=False)


def test_save_reload_and_json_round_trips_give_an_equal_to_dict(tmp_path):
    processor = FaceptorImageProcessor(dense_size=64, face_mean=(0.1, 0.2, 0.3), image_std=0.25)
    assert processor.face_mean == [0.1, 0.2, 0.3] and processor.dense_std == processor.face_std == [0.25] * 3
    processor.save_pretrained(tmp_path)
    assert FaceptorImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()
    processor.to_json_file(tmp_path / "processor.json")
    assert FaceptorImageProcessor.from_json_file(tmp_path / "processor.json").to_dict() == processor.to_dict()
    assert FaceptorImageProcessor.from_dict(processor.to_dict()).to_dict() == processor.to_dict()


def test_the_default_output_is_every_group_the_model_reads():
    image = coordinate_image()
    plain = FaceptorImageProcessor(dense_size=64, face_size=32)(image)
    assert {key: tuple(value.shape) for key, value in plain.items()} == {
        "pixel_values": (1, 3, 64, 64),
        "pixel_values_face": (1, 3, 32, 32),
    }
    warped = FaceptorImageProcessor(dense_size=64, face_size=32, parsing_warp_factor=0.8)(image)
    assert set(warped) == {"pixel_values", "pixel_values_face", "pixel_values_parsing"}
