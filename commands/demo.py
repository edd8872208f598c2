"""`faceptor demo`: a Gradio page for a Faceptor model. Drop, paste or pick a photo and see every task the model
has (the annotated picture, a panel per face, the raw JSON); compare the faces of two photos by identity.

The model's task list drives the page, so a task added with `add_task` / `load_task` shows up. Predictions go
through `pipeline("face-perception")`; pictures through `faceptor.visualization.drawing`. Errors (not an
image, too large, no task picked) are messages in the page, never a stack trace. `faceptor push --space` writes a
Space whose `app.py` calls [`load_demo`] on the model's Hub repo (`space.py`).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import io
import json
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..assets import bundled_photos
from ..demo_model import announce_demo_model, demo_model_path
from ..processing.image_loading import ImageLoadError, load_image
from ..processing.mask_encoding import decode_label_map
from ..visualization.drawing import draw_result
from .arguments import DEFAULT_IDENTITY_THRESHOLD, add_demo_command
from .errors import CommandError
from .model_loading import load_image_processor

logger = logging.getLogger(__name__)

MAX_UPLOAD_SIZE = "20mb"  # Gradio refuses larger uploads in the page
MAX_IMAGE_PIXELS = 40_000_000  # a photo larger than this is refused: seconds per request on a CPU Space
MAX_VIDEO_SECONDS = 30.0  # the video tab takes short clips: beyond this the analysis stops
VIDEO_FRAMES_PER_SECOND = 5.0  # frames analysed per second of video
PACKAGE = __package__.rpartition(".")[0]  # "faceptor"


class DemoInputError(ValueError):
    """An input the page cannot use; the message is shown in the page as is."""


@dataclass
class Analysis:
    """What the photo tab shows: a one-line message, the annotated picture, the per-face panel (Markdown) and the
    pipeline's result (None for an error)."""

    message: str
    picture: Image.Image | None = None
    panel: str = ""
    result: dict | None = None


@dataclass
class Comparison:
    """What the comparison tab shows: the verdict and the cosine table (Markdown) and each photo with its faces
    numbered; `cosines[i][j]` is face i of the first photo against face j of the second."""

    message: str
    pictures: tuple[Image.Image | None, Image.Image | None] = (None, None)
    cosines: list[list[float]] = field(default_factory=list)


@dataclass
class VideoAnalysis:
    """What the video tab shows: the message (with the tracks found), the annotated video's path (None for an
    error) and the per-frame results."""

    message: str
    video: str | None = None
    frames: list[dict] = field(default_factory=list)


def video_supported() -> bool:
    """Whether the video tab can work: `faceptor.video` and PyAV (the `video` extra) are installed."""
    return importlib.util.find_spec(f"{PACKAGE}.video") is not None and importlib.util.find_spec("av") is not None


def identity_threshold_for(model_source: str) -> tuple[float, str]:
    """The cosine at or above which two faces are called the same person, and where that number comes from: for a
    model folder with measured pairs (the demo model's `scores.json`), halfway between its mean same-person and
    other-person cosines; otherwise `DEFAULT_IDENTITY_THRESHOLD`."""
    scores_path = Path(model_source, "scores.json")
    if scores_path.is_file():
        identity = json.loads(scores_path.read_text(encoding="utf-8")).get("identity", {})
        same, other = identity.get("mean_cosine_same"), identity.get("mean_cosine_other")
        if isinstance(same, float) and isinstance(other, float):
            return (same + other) / 2, (
                f"halfway between this model's mean cosine for the same person ({same:.3f}) and for different "
                f"people ({other:.3f}) on its held-out pairs"
            )
    return DEFAULT_IDENTITY_THRESHOLD, (
        "a usual operating point for CosFace/ArcFace-trained embeddings; check it on pairs of your own "
        "(`faceptor demo --identity-threshold`)"
    )


def example_photos() -> list[str]:
    """The bundled photos offered as examples."""
    return [str(path) for path in bundled_photos()]


def _payload_source(payload: Any) -> tuple[Any, str]:
    """A Gradio image payload (unprocessed: a dict with the uploaded file's `path`, or a `data:` URL), a path, a
    PIL image or an array -> (something `load_image` takes, the name to show)."""
    if isinstance(payload, dict):
        if isinstance(payload.get("video"), dict):  # a Gradio video payload: the file and its subtitles
            payload = payload["video"]
        if payload.get("path"):
            return payload["path"], payload.get("orig_name") or os.path.basename(payload["path"])
        url = payload.get("url") or ""
        if url.startswith("data:"):
            try:
                return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))), "the pasted image"
            except (ValueError, OSError):
                raise DemoInputError("The pasted data is not an image.") from None
        raise DemoInputError("The upload carried no file.")
    if isinstance(payload, (str, os.PathLike)):
        return payload, os.path.basename(payload)
    return payload, "the image"


def gradio_upload_folder() -> str:
    """Where Gradio stores the files a page uploads (and its cached examples): `GRADIO_TEMP_DIR`, else its folder
    in the system's temporary directory."""
    try:
        from gradio.utils import get_upload_folder
    except ImportError:  # a Gradio without the helper: its documented default
        return os.environ.get("GRADIO_TEMP_DIR") or os.path.join(tempfile.gettempdir(), "gradio")
    return get_upload_folder()


def uploaded_only(payload: Any, upload_folder: str | os.PathLike) -> Any:
    """A payload from the page's HTTP API, kept only when it names a file inside Gradio's `upload_folder` (what
    Gradio itself stored for an upload or an example) or carries the image's bytes (a `data:` URL); `None` stays
    `None`. Anything else (a path on the server, a URL) is refused with the same words whether or not that path
    exists, so that a client can neither read nor probe the server's files: the events run unprocessed, without
    Gradio's own upload checks."""
    if payload is None:
        return None
    inner = payload.get("video") if isinstance(payload, dict) and isinstance(payload.get("video"), dict) else payload
    if isinstance(inner, dict) and not inner.get("path") and str(inner.get("url") or "").startswith("data:"):
        return payload
    path = inner.get("path") if isinstance(inner, dict) else inner
    if isinstance(path, str) and path:
        folder = os.path.realpath(upload_folder)
        resolved = os.path.realpath(path)  # links and ".." resolved: a link in the folder to elsewhere is refused
        if os.path.commonpath([folder, resolved]) == folder and resolved != folder:
            return payload
    raise DemoInputError("The upload carried no file.")


def load_photo(payload: Any) -> tuple[np.ndarray, str]:
    """Any photo the page receives -> (an (H, W, 3) uint8 RGB array, the name to show); `DemoInputError` with a
    message naming the file for anything that is not a usable image, or larger than `MAX_IMAGE_PIXELS`."""
    source, name = _payload_source(payload)
    size = None
    if isinstance(source, (str, os.PathLike)):
        try:  # the header alone: a huge photo is refused before it is decoded
            with Image.open(source) as header:
                size = header.size
        except Exception:  # not an image, or unreadable: load_image names the reason
            size = None
    elif isinstance(source, Image.Image):
        size = source.size
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise DemoInputError(
            f"{name}: {size[0]}x{size[1]} is too large for this demo (at most {MAX_IMAGE_PIXELS / 1e6:.0f} "
            "megapixels); scale it down."
        )
    try:
        return load_image(source), name
    except ImageLoadError as error:
        message = str(error)
        if isinstance(source, (str, os.PathLike)):
            message = message.replace(os.fspath(source), name)  # the upload's name, not the server's temp path
        raise DemoInputError(message) from None


def _task_value(face: dict, spec: Any) -> Any:
    """One face's result of task `spec`: under its kind's key when it is the first task of that kind, else under
    "more" (the pipeline's layout)."""
    key = spec.kind_info.result_key
    if face.get("task_of", {}).get(key) == spec.name:
        return face[key]
    return face.get("more", {}).get(spec.name)


def _regions(value: dict) -> str:
    present = np.unique(decode_label_map(value["mask"]))
    names = [value["labels"][index] for index in present.tolist() if index > 0]
    return f"{len(names)} regions: {', '.join(names)}" if names else "no region"


def _norm(value: list[float]) -> str:
    return f"{len(value)}-D, norm {math.sqrt(sum(component * component for component in value)):.3f}"


# A task's value in words, per JSON form of its kind, for the kinds whose entry gives no `demo_caption`.
FORM_WORDS = {
    "points": lambda points: f"{len(points)} points (green)",
    "label_map": _regions,
    "number": lambda number: f"{number:.2f}",
    "named_values": lambda values: ", ".join(f"{name.replace('_', ' ')} {value:.3g}" for name, value in values.items()),
    "vector": _norm,
}


def describe_task(spec: Any, value: Any) -> str:
    """One task's result for one face, in words: its kind's `demo_caption`, else its JSON form's words."""
    kind = spec.kind_info
    return (kind.demo_caption or FORM_WORDS[kind.json_form])(value)


def face_panel(faces: list[dict], specs: list[Any]) -> str:
    """Markdown: per face its box and one table row per task."""
    blocks = []
    for number, face in enumerate(faces, start=1):
        x0, y0, x1, y1 = (round(value) for value in face["box"])
        score = "" if face.get("score") is None else f", detector score {face['score']:.2f}"
        rows = ["| task | result |", "| --- | --- |"]
        for spec in specs:
            value = _task_value(face, spec)
            if value is not None:
                rows.append(f"| {spec.name} ({spec.kind}) | {describe_task(spec, value)} |")
        blocks.append(f"**Face {number}**: box ({x0}, {y0}) to ({x1}, {y1}){score}\n\n" + "\n".join(rows))
    return "\n\n".join(blocks)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _one_line(error: Exception) -> str:
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def number_faces(picture: Image.Image, faces: list[dict]) -> Image.Image:
    """Writes each face's number at its box's top-left corner, so the comparison table can name faces."""
    draw = ImageDraw.Draw(picture)
    for number, face in enumerate(faces, start=1):
        x0, y0 = face["box"][:2]
        frame = draw.textbbox((x0 + 3, y0 + 3), str(number))
        draw.rectangle([frame[0] - 2, frame[1] - 2, frame[2] + 2, frame[3] + 2], fill=(255, 255, 0))
        draw.text((x0 + 3, y0 + 3), str(number), fill=(0, 0, 0))
    return picture


class FaceDemo:
    """The page's logic around one `face-perception` pipeline, usable without Gradio: [`analyse`] and
    [`compare`] are what the page's buttons call."""

    def __init__(
        self,
        face_pipeline,
        model_source: str,
        identity_threshold: float | None = None,
        model_label: str | None = None,
    ):
        self.pipeline = face_pipeline
        self.model_source = model_source
        self.model_label = model_label or model_source  # what the page calls the model
        self.specs = list(face_pipeline.model.task_specs.values())
        self.identity_task = next((spec.name for spec in self.specs if spec.kind == "embedding"), None)
        threshold, note = identity_threshold_for(model_source)
        if identity_threshold is not None:
            threshold, note = identity_threshold, "set with --identity-threshold"
        self.identity_threshold, self.threshold_note = threshold, note
        self._lock = threading.Lock()  # one prediction at a time: the page's two tabs share the model
        self.upload_folder = gradio_upload_folder()  # the only place the page's events may read files from

    @property
    def task_names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    def _predict(self, image: np.ndarray, tasks: list[str] | None) -> dict:
        with self._lock:
            return self.pipeline(image, tasks=tasks)

    def analyse(self, photo: Any, tasks: list[str] | None = None) -> Analysis:
        """A photo (Gradio payload, path, PIL image or array) and the task names to run (all when None) -> what
        the photo tab shows. Bad input gives an `Analysis` with only the message."""
        if photo is None:
            return Analysis("Upload, paste or pick a photo.")
        if tasks is not None and not tasks:
            return Analysis("**Error:** pick at least one task.")
        try:
            image, name = load_photo(photo)
            specs = self.pipeline.model.resolve_tasks(tasks)
        except (DemoInputError, ValueError) as error:
            return Analysis(f"**Error:** {error}")
        start = time.perf_counter()
        result = {**self._predict(image, [spec.name for spec in specs]), "source": name}  # not "array (H, W, 3)"
        seconds = time.perf_counter() - start
        faces = result["faces"]
        if not faces:
            message = f"No face found in this {image.shape[1]}x{image.shape[0]} photo."
        else:
            message = f"{_count(len(faces), 'face')} found, {_count(len(specs), 'task')}, {seconds:.2f} s."
        return Analysis(message, draw_result(image, result), face_panel(faces, specs), result)

    def compare(self, first: Any, second: Any) -> Comparison:
        """Two photos -> the identity cosine of every face of the first against every face of the second, with
        the verdict of the closest pair against the threshold."""
        if self.identity_task is None:
            return Comparison("**Error:** this model has no identity-embedding task, so faces cannot be compared.")
        if first is None or second is None:
            return Comparison("Give two photos.")
        results, pictures = [], []
        for which, photo in (("first", first), ("second", second)):
            try:
                image, _ = load_photo(photo)
            except DemoInputError as error:
                return Comparison(f"**Error** in the {which} photo: {error}")
            result = self._predict(image, [self.identity_task])
            if not result["faces"]:
                return Comparison(f"No face found in the {which} photo.")
            results.append(result["faces"])
            pictures.append(number_faces(draw_result(image, result), result["faces"]))
        embeddings = [np.asarray([face["embedding"] for face in faces], dtype=np.float64) for faces in results]
        cosines = embeddings[0] @ embeddings[1].T  # the pipeline's embeddings are L2-normalised
        best = np.unravel_index(np.argmax(cosines), cosines.shape)
        best_cosine = float(cosines[best])
        same = best_cosine >= self.identity_threshold
        verdict = "the same person" if same else "different people"
        header = "| first \\ second | " + " | ".join(f"face {j + 1}" for j in range(cosines.shape[1])) + " |"
        rows = [header, "|---" * (cosines.shape[1] + 1) + "|"]
        for i, row in enumerate(cosines):
            rows.append(f"| face {i + 1} | " + " | ".join(f"{value:.3f}" for value in row) + " |")
        message = (
            f"Closest pair: face {best[0] + 1} and face {best[1] + 1}, cosine **{best_cosine:.3f}**: "
            f"**{verdict}** (threshold {self.identity_threshold:.3f}).\n\n" + "\n".join(rows)
        )
        return Comparison(message, (pictures[0], pictures[1]), cosines.round(6).tolist())

    def analyse_video(self, video: Any, frames_per_second: float = VIDEO_FRAMES_PER_SECOND) -> VideoAnalysis:
        """A short video (Gradio payload or path) -> its annotated copy (`frames_per_second` frames a second, faces
        tracked across frames, at most `MAX_VIDEO_SECONDS`) and a line per track. Bad input gives only a message."""
        from ..video.perception import perceive_video
        from ..video.reading import VideoError, video_info
        from ..video.writing import AnnotatedVideoWriter, annotate_frame

        if video is None:
            return VideoAnalysis("Upload a short video.")
        try:
            path, name = _payload_source(video)
        except DemoInputError as error:
            return VideoAnalysis(f"**Error:** {error}")
        start = time.perf_counter()
        frames, appearances, broken = [], {}, ""
        try:
            info = video_info(path)
            rate = min(frames_per_second, float(info.fps)) if info.fps else frames_per_second
            output = Path(tempfile.mkdtemp(prefix="faceptor-demo-video-"), f"{Path(name).stem}-faceptor.mp4")
            with self._lock, AnnotatedVideoWriter(output, rate, info.width, info.height) as writer:
                try:
                    for frame, result in perceive_video(self.pipeline, path, fps=rate):
                        if frame.time_s > MAX_VIDEO_SECONDS:
                            break  # a short clip's demo: the rest is left out, and said so below
                        writer.write(annotate_frame(frame.image, result))
                        frames.append(result)
                        for face in result["faces"]:
                            appearances[face["track_id"]] = appearances.get(face["track_id"], 0) + 1
                except VideoError as error:
                    if not frames:
                        raise
                    broken = f" The video broke off there: {error}"  # the frames that decoded are kept
        except (VideoError, OSError) as error:
            return VideoAnalysis(f"**Error:** {str(error).replace(os.fspath(path), name)}")
        seconds = time.perf_counter() - start
        tracks = ", ".join(f"#{track} in {count} frames" for track, count in sorted(appearances.items()))
        cut = (
            f" (the first {MAX_VIDEO_SECONDS:.0f} s)"
            if frames and info.duration_s and info.duration_s > MAX_VIDEO_SECONDS
            else ""
        )
        found = f"{_count(len(appearances), 'face')} tracked: {tracks}."
        message = f"{len(frames)} frames analysed{cut}, {rate:g} a second, in {seconds:.1f} s; " + (
            found if appearances else "no face found."
        )
        return VideoAnalysis(message + broken.replace(os.fspath(path), name), str(output), frames)

    # ------------------------------------------------------------------------------------------ the page

    def build_app(self):
        """The Gradio page: a photo tab, a comparison tab (explained away when the model has no identity task)
        and, with the `video` extra, a video tab."""
        import gradio as gr

        task_kinds = ", ".join(f"{spec.name} ({spec.kind})" for spec in self.specs)
        with gr.Blocks(title="Faceptor demo") as app:
            gr.Markdown(
                f"# Faceptor\nOne model, every face task. Model: {self.model_label}. Tasks: {task_kinds}.",
                elem_id="header",
            )
            with gr.Tab("Photo"):
                with gr.Row():
                    with gr.Column():
                        photo = gr.Image(
                            type="filepath", sources=["upload", "clipboard"], label="Photo", elem_id="photo"
                        )
                        tasks = gr.CheckboxGroup(
                            choices=[(f"{spec.name} ({spec.kind})", spec.name) for spec in self.specs],
                            value=self.task_names,
                            label="Tasks",
                            elem_id="tasks",
                        )
                        run = gr.Button("Analyse", variant="primary", elem_id="analyse")
                        gr.Examples(example_photos(), inputs=photo, label="Bundled photos")
                    with gr.Column():
                        message = gr.Markdown(elem_id="message")
                        picture = gr.Image(label="Result", type="pil", interactive=False, elem_id="picture")
                        panel = gr.Markdown(elem_id="faces")
                raw = gr.JSON(label="Raw result (JSON)", elem_id="raw-json")
                outputs = [message, picture, panel, raw]
                for event, api_name in ((photo.change, False), (run.click, "analyse")):
                    # Unprocessed: the page's own loader gives a clear message where Gradio's would fail (and
                    # `uploaded_only` does the upload check that Gradio's preprocessing would have done).
                    event(
                        self._page_analyse, inputs=[photo, tasks], outputs=outputs, preprocess=False, api_name=api_name
                    )
            with gr.Tab("Compare two photos"):
                if self.identity_task is None:
                    gr.Markdown("This model has no identity-embedding task, so it cannot compare faces.")
                else:
                    gr.Markdown(
                        f"Cosine similarity of the identity embeddings (`{self.identity_task}`) of every face of "
                        f"the first photo with every face of the second. The closest pair is called the same "
                        f"person at a cosine of **{self.identity_threshold:.3f}** or more: {self.threshold_note}."
                    )
                    with gr.Row():
                        first = gr.Image(type="filepath", sources=["upload", "clipboard"], label="First photo")
                        second = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Second photo")
                    compare = gr.Button("Compare", variant="primary", elem_id="compare")
                    verdict = gr.Markdown(elem_id="verdict")
                    with gr.Row():
                        first_faces = gr.Image(label="First photo's faces", type="pil", interactive=False)
                        second_faces = gr.Image(label="Second photo's faces", type="pil", interactive=False)
                    compare.click(
                        self._page_compare,
                        inputs=[first, second],
                        outputs=[verdict, first_faces, second_faces],
                        preprocess=False,
                        api_name="compare",
                    )
            if video_supported():
                with gr.Tab("Video"):
                    gr.Markdown(
                        f"A short clip (the first {MAX_VIDEO_SECONDS:.0f} s are analysed, "
                        f"{VIDEO_FRAMES_PER_SECOND:g} frames a second): every face tracked across frames, numbered "
                        "by track, with every task."
                    )
                    with gr.Row():
                        clip = gr.Video(label="Video", sources=["upload"], elem_id="clip")
                        annotated = gr.Video(label="Annotated", interactive=False, elem_id="annotated")
                    run_video = gr.Button("Analyse the video", variant="primary", elem_id="analyse-video")
                    video_message = gr.Markdown(elem_id="video-message")
                    run_video.click(
                        self._page_video,
                        inputs=clip,
                        outputs=[video_message, annotated],
                        preprocess=False,
                        api_name="analyse_video",
                    )
        return app

    def _page_analyse(self, photo: Any, tasks: list[str] | None):
        try:
            analysis = self.analyse(uploaded_only(photo, self.upload_folder), tasks)
        except DemoInputError as error:
            analysis = Analysis(f"**Error:** {error}")
        except Exception as error:  # the page shows one line; the traceback goes to the server's log
            logger.exception("analyse failed")
            analysis = Analysis(f"**Error:** {_one_line(error)}")
        return analysis.message, analysis.picture, analysis.panel, analysis.result

    def _page_video(self, video: Any):
        try:
            analysis = self.analyse_video(uploaded_only(video, self.upload_folder))
        except DemoInputError as error:
            analysis = VideoAnalysis(f"**Error:** {error}")
        except Exception as error:  # as above
            logger.exception("video failed")
            analysis = VideoAnalysis(f"**Error:** {_one_line(error)}")
        return analysis.message, analysis.video

    def _page_compare(self, first: Any, second: Any):
        try:
            comparison = self.compare(*(uploaded_only(photo, self.upload_folder) for photo in (first, second)))
        except DemoInputError as error:
            comparison = Comparison(f"**Error:** {error}")
        except Exception as error:  # as above
            logger.exception("compare failed")
            comparison = Comparison(f"**Error:** {_one_line(error)}")
        return comparison.message, *comparison.pictures


def load_demo(model: str | None = None, device: str | None = None, identity_threshold: float | None = None) -> FaceDemo:
    """A [`FaceDemo`] of a model folder or Hub repo (the bundled demo model when None). Raises `CommandError` when
    the model cannot be loaded."""
    from transformers import pipeline

    label = f"`{model}`"
    if model is None:
        try:
            model = demo_model_path()
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
        announce_demo_model()
        label = "the bundled demo model (small, distilled; its card is `faceptor/demo_model/README.md`)"
    try:
        # A local folder's processor is validated (no silent defaults); a Hub repo's comes with it.
        processor = load_image_processor(model) if os.path.isdir(model) else None
        face_pipeline = pipeline("face-perception", model=model, image_processor=processor, device=device)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"{model}: cannot load a Faceptor model ({str(error).splitlines()[0]})") from None
    return FaceDemo(face_pipeline, model, identity_threshold=identity_threshold, model_label=label)


def command_demo(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("gradio") is None:
        raise CommandError("the demo needs Gradio: pip install 'faceptor[demo]'")
    start = time.perf_counter()
    app = load_demo(args.model, args.device, args.identity_threshold).build_app()
    app.queue()
    try:
        app.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            max_file_size=MAX_UPLOAD_SIZE,
            prevent_thread_lock=True,
            quiet=True,
        )
    except OSError as error:  # the port is taken, or the address is not this machine's
        raise CommandError(f"cannot serve on {args.host}:{args.port} ({str(error).splitlines()[0]})") from None
    seconds = time.perf_counter() - start
    print(f"faceptor demo: serving on {app.local_url} (model and page ready in {seconds:.1f} s); Ctrl+C stops")
    if args.share and app.share_url:
        print(f"faceptor demo: public link {app.share_url}")
    try:
        app.block_thread()
    except KeyboardInterrupt:
        app.close()


__all__ = [
    "DemoInputError",
    "FaceDemo",
    "video_supported",
    "add_demo_command",
    "identity_threshold_for",
    "load_demo",
    "load_photo",
]
