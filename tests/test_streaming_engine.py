"""The one streaming engine (processing/streaming.py) behind `pipeline(list or generator)`, `faceptor predict` and
videos: the detector follows the model's device, a detector on an accelerator is called once per chunk on the
pixels where they are, every entry point gives the same records, memory stays bounded over a long generator, and a
bad image among many is one error record."""

import itertools

import numpy as np
import pytest
import torch
from transformers import pipeline

from faceptor import FacePerceptionPipeline
from faceptor.processing.detection import MTCNNDetector
from faceptor.processing.streaming import detects_on_device, stream_faces

pytest.importorskip("onnxruntime")


def test_the_default_detector_runs_on_the_models_device(model_dir):
    face_pipeline = pipeline("face-perception", model=str(model_dir))
    on_cpu, _ = face_pipeline.resolve_detector("auto")
    assert isinstance(on_cpu, MTCNNDetector) and on_cpu.backend == "onnxruntime" and not detects_on_device(on_cpu)
    # A model on an accelerator (the meta device stands in for one: no GPU here): the torch cascade goes there.
    face_pipeline.device = torch.device("meta")
    on_accelerator, _ = face_pipeline.resolve_detector("auto")
    assert on_accelerator.backend == "torch" and on_accelerator.device == torch.device("meta")
    assert next(on_accelerator.pnet.parameters()).device.type == "meta" and detects_on_device(on_accelerator)
    # `detector_device` overrides the model's device.
    elsewhere = pipeline("face-perception", model=str(model_dir), detector_device="meta")
    assert elsewhere.device.type == "cpu" and elsewhere.resolve_detector("auto")[0].device.type == "meta"


class RecordingDeviceDetector:
    """A batched detector 'on an accelerator': records what each call was handed; one face per image."""

    device = torch.device("meta")

    def __init__(self):
        self.calls: list[list[torch.Tensor]] = []

    def detect_batch(self, images):
        self.calls.append(list(images))
        return [[[4.0, 4.0, 40.0, 40.0]] for _ in images]


class PixelPipeline:
    """The engine's contract with a pipeline: records the pixels each chunk carried, one face per image."""

    def __init__(self, detector):
        self.detector, self.chunks = detector, []

    def resolve_detector(self, detector):
        return self.detector, "detector"

    detect = staticmethod(FacePerceptionPipeline.detect)  # the pipeline's own hand-over to a detector

    def run_images(self, images, tasks=None, detector=None, batch_size=None):
        self.chunks.append(images)
        return [{"source": image["source"], "faces": image["detections"]} for image in images]


def test_a_detector_on_the_device_is_called_once_per_chunk_on_the_pixels_where_they_are():
    decoded = {}

    def decoder(name):  # pixels "already on the device": the engine must hand these very tensors on
        decoded[name] = torch.full((3, 32, 48), len(decoded), dtype=torch.uint8)
        return decoded[name]

    detector = RecordingDeviceDetector()
    fake = PixelPipeline(detector)
    names = [f"{index}.jpg" for index in range(10)]
    items = list(stream_faces(fake, names, batch_size=4, images_in_flight=8, workers=2, decoder=decoder))
    assert [item.input for item in items] == names and all(item.result["faces"] for item in items)
    assert [len(call) for call in detector.calls] == [4, 4, 2]  # one call per chunk of images, not per image
    handed = [image for call in detector.calls for image in call]
    for name, image in zip(names, handed, strict=True):
        assert image.shape == (32, 48, 3)  # an (H, W, 3) view ...
        assert image.data_ptr() == decoded[name].data_ptr()  # ... of the decoded tensor itself: no copy
    carried = [image["pixels"] for chunk in fake.chunks for image in chunk]
    assert all(p is decoded[name] for p, name in zip(carried, names, strict=True))  # the crops read them in place


def test_a_long_generator_is_read_only_a_window_ahead():
    pulled = [0]

    def endless():
        for index in itertools.count():
            pulled[0] += 1
            yield f"{index}.jpg"

    fake = PixelPipeline(RecordingDeviceDetector())
    decoder = lambda name: torch.zeros(3, 16, 16, dtype=torch.uint8)  # noqa: E731
    stream = stream_faces(fake, endless(), batch_size=4, images_in_flight=8, workers=2, decoder=decoder)
    for done, _ in enumerate(itertools.islice(stream, 500), start=1):
        assert pulled[0] - done <= 8 + 4  # the decode window and one chunk, however long the input
    stream.close()


def test_every_entry_point_gives_the_same_records(face_pipeline, astronaut, tmp_path):
    from PIL import Image

    paths = []
    for index, size in enumerate((384, 256, 200)):
        path = tmp_path / f"photo_{index}.png"
        Image.fromarray(astronaut).resize((size, size * 4 // 3)).save(path)
        paths.append(str(path))
    paths.insert(1, str(tmp_path / "missing.jpg"))
    one_by_one = []
    for path in paths:
        try:
            one_by_one.append(face_pipeline(path, tasks=["age_morph2", "align_300w"]))
        except Exception as error:
            one_by_one.append({"source": path, "error": type(error).__name__})
    as_list = face_pipeline(paths, tasks=["age_morph2", "align_300w"], batch_size=2)
    generated = face_pipeline((path for path in paths), tasks=["age_morph2", "align_300w"], batch_size=3)
    assert not isinstance(generated, list)
    generated = list(generated)
    for results in (as_list, generated):
        assert [result["source"] for result in results] == paths
        assert ["error" in result for result in results] == [False, True, False, False]  # one bad, one record
        for result, single in zip(results, one_by_one, strict=True):
            if "error" not in result:
                assert result["image_size"] == single["image_size"]
                assert len(result["faces"]) == len(single["faces"]) >= 1
                for face, expected in zip(result["faces"], single["faces"], strict=True):
                    assert face["box"] == expected["box"] and face["box_source"] == expected["box_source"]
                    assert face["age"] == pytest.approx(expected["age"], abs=1e-3)
                    np.testing.assert_allclose(face["landmarks"], expected["landmarks"], atol=1e-2)


def test_video_frames_get_the_records_their_images_get(face_pipeline, tmp_path):
    pytest.importorskip("av")
    from test_video import write_clip

    from faceptor.video.perception import perceive_video

    clip = write_clip(tmp_path / "clip.mp4")
    tasks = ["age_morph2", "align_300w"]
    pairs = list(perceive_video(face_pipeline, clip, every=2, tasks=tasks, batch_size=3))
    singles = face_pipeline([frame.image for frame, _ in pairs], tasks=tasks, batch_size=3, detector="auto")
    assert len(pairs) >= 3
    for (frame, record), single in zip(pairs, singles, strict=True):
        assert record["frame"] == frame.index and record["image_size"] == single["image_size"]
        assert [face["box"] for face in record["faces"]] == [face["box"] for face in single["faces"]]
        assert [face["age"] for face in record["faces"]] == [face["age"] for face in single["faces"]]


def test_the_chunk_batched_detection_path_gives_the_per_image_records(face_pipeline, astronaut, tmp_path, monkeypatch):
    """The GPU path's logic on the CPU: the torch cascade called once per chunk on the engine's pixels (as on an
    accelerator) finds the faces the per-image onnxruntime path finds, and the records agree."""
    from PIL import Image

    from faceptor.processing import streaming

    paths = []
    for index, size in enumerate((384, 300, 256, 320, 200)):
        path = tmp_path / f"photo_{index}.jpg"
        Image.fromarray(astronaut).resize((size, size * 4 // 3)).save(path, quality=95)
        paths.append(str(path))
    tasks = ["age_morph2", "align_300w"]
    on_threads = face_pipeline(paths, tasks=tasks, batch_size=2, detector="auto")
    batched = MTCNNDetector(device="cpu", backend="torch", resampler="torch")
    calls = []
    detect_batch = batched.detect_batch
    batched.detect_batch = lambda images: calls.append(len(images)) or detect_batch(images)
    monkeypatch.setattr(streaming, "detects_on_device", lambda detector: detector is batched)
    in_chunks = face_pipeline(paths, tasks=tasks, batch_size=2, detector=batched)
    assert calls == [2, 2, 1]  # one call per chunk of images
    for one, other in zip(on_threads, in_chunks, strict=True):
        assert len(one["faces"]) == len(other["faces"]) >= 1
        for face, same in zip(one["faces"], other["faces"], strict=True):
            np.testing.assert_allclose(face["box"], same["box"], atol=0.02)
            assert face["age"] == pytest.approx(same["age"], abs=1e-2)
