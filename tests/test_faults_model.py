"""Broken model folders, conversions, exports and pushes: each case gives its exit status and one line on stderr
that names the real cause (no traceback), and leaves every input and earlier output as it was.

Rows run `faceptor ...` in this process (`run_cli`), except the network ones: `HF_ENDPOINT` is read when
huggingface_hub is imported, so those run in one subprocess pointed at a local socket (closed, or accepting and
never answering)."""

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import pipeline
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from conftest import run_cli, tiny_config
from faceptor import FaceptorImageProcessor, FaceptorModel
from faceptor.commands.errors import CommandError, error_summary
from faceptor.commands.model_loading import load_model_folder

OFFICIAL = Path(__file__).parent / "fixtures" / "official" / "faceptor_stage1.pth.tar"
FIXTURE_HEADS = ["--encoder-heads", "2", "--decoder-heads", "4"]  # the fixture's reduced official model
IMAGE = Path(__file__).parents[1] / "assets" / "astronaut.jpg"
BROKEN_TENSOR = "decoder.query_features.age_morph2"
PUSH_TIMEOUT_S = 1  # the hanging server's case: --timeout 1


def edit_config(folder: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def edit_tensors(folder: Path, edit: Callable[[dict], None]) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def edit_processor(folder: Path, edit: Callable[[dict], None]) -> None:
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    edit(settings)
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A good tiny model folder, its broken variants, inputs, and earlier outputs that no failure may touch."""
    root = tmp_path_factory.mktemp("faults")
    good = root / "good"
    FaceptorModel(tiny_config()).eval().save_pretrained(good)
    FaceptorImageProcessor(dense_size=64, face_size=32).save_pretrained(good)
    variants = {
        "no_tasks": lambda f: edit_config(f, lambda c: c.pop("tasks")),
        "text_size": lambda f: edit_config(f, lambda c: c.update(hidden_size="768")),
        "missing": lambda f: edit_tensors(f, lambda t: t.pop(BROKEN_TENSOR)),
        "nan": lambda f: edit_tensors(f, lambda t: t[BROKEN_TENSOR].fill_(float("nan"))),
        "truncated": lambda f: truncate(f / "model.safetensors"),
        "no_processor": lambda f: (f / "preprocessor_config.json").unlink(),
        "processor_not_json": lambda f: (f / "preprocessor_config.json").write_text("{dense_size: 64"),
        "std_zero": lambda f: edit_processor(f, lambda p: p.update(dense_std=[0.0, 0.0, 0.0])),
        "size_zero": lambda f: edit_processor(f, lambda p: p.update(face_size=0)),
        "size_60000": lambda f: edit_processor(f, lambda p: p.update(dense_size=60000)),
        "absurd_size": lambda f: edit_config(f, lambda c: c.update(intermediate_size=100_000_000_000)),
    }
    for name, make in variants.items():
        shutil.copytree(good, root / name)
        make(root / name)
    (root / "empty").mkdir()
    (root / "data").mkdir()
    shutil.copy(IMAGE, root / "face.jpg")
    checkpoint = torch.load(OFFICIAL, weights_only=True)
    key = next(key for key in checkpoint["state_dict"] if "query_feat" in key)
    checkpoint["state_dict"][key] = torch.full_like(checkpoint["state_dict"][key], float("inf"))
    torch.save(checkpoint, root / "inf.pth.tar")
    shutil.copy(OFFICIAL, root / "official.pth.tar")
    (root / "converted").mkdir()
    (root / "converted" / "notes.txt").write_text("an earlier model folder\n")
    (root / "earlier.onnx").write_bytes(b"an earlier export")
    (root / "earlier.jsonl").write_text('{"source": "earlier"}\n')
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "notes.txt").write_text("the folder a link points to\n")
    (root / "linked").symlink_to(root / "elsewhere")
    return root


def tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under `folder` (but the top-level names in `skip`), by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).parts[0] not in skip
    }


# ------------------------------------------------------------------------------------------- network


def silent_server() -> socket.socket:
    """A socket on 127.0.0.1 that accepts every connection and never answers (a thread holds them open)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept_forever() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept_forever, daemon=True).start()
    return server


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


PUSH_CLIENT = """
import contextlib, io, json, sys, time
from faceptor.commands import cli
from huggingface_hub import constants

results = {}
for case, endpoint, extra in json.loads(sys.argv[1]):
    constants.ENDPOINT = endpoint  # the first case's is HF_ENDPOINT, read at import
    stderr = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stderr(stderr):
        status = cli.main(["push", sys.argv[2], "tester/tiny", *extra])
    results[case] = {"status": status, "stderr": stderr.getvalue(), "seconds": time.monotonic() - start}
print("PUSH-RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def push_results(workspace, tmp_path_factory) -> dict:
    """`faceptor push` of the good folder to a closed port and to a server that never answers, in one client
    process whose Hub endpoint is set before huggingface_hub is imported."""
    server = silent_server()
    silent = f"http://127.0.0.1:{server.getsockname()[1]}"
    cases = [
        ["closed port", f"http://127.0.0.1:{closed_port()}", []],
        ["never answers", silent, ["--timeout", str(PUSH_TIMEOUT_S)]],
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=cases[0][1],
        HF_TOKEN="hf_localTestToken",
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(tmp_path_factory.mktemp("hf_home")),
        NO_PROXY="127.0.0.1,localhost",
    )
    before = tree_digest(workspace)
    try:
        process = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(PUSH_CLIENT), json.dumps(cases), str(workspace / "good")],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        server.close()
    lines = [line for line in process.stdout.splitlines() if line.startswith("PUSH-RESULTS ")]
    assert lines, process.stderr[-3000:]
    results = json.loads(lines[0].removeprefix("PUSH-RESULTS "))
    for result in results.values():
        result["changed"] = tree_digest(workspace) != before
    return results


# ----------------------------------------------------------------------------------------------- table


@dataclass
class Case:
    id: str
    argv: Callable[[Path], list[str]]  # the command's arguments, given the workspace
    message: str  # a regular expression the one-line error must contain
    status: int = 2
    network: str | None = None  # the case of `push_results` (run in a subprocess), not run in this process


def predict(model: str, *extra: str) -> Callable[[Path], list[str]]:
    return lambda w: ["predict", str(w / "face.jpg"), "--model", str(w / model), "--no-detector", "--quiet", *extra]


def export(model: str, *extra: str) -> Callable[[Path], list[str]]:
    return lambda w: ["export", "onnx", str(w / model), str(w / "earlier.onnx"), "--tasks", "age_morph2", *extra]


def evaluate(model: str) -> Callable[[Path], list[str]]:
    return lambda w: [
        "evaluate",
        "--model",
        str(w / model),
        "--task",
        "age_morph2",
        "--data",
        str(w / "data"),
        "--output",
        str(w / "earlier.jsonl"),
        "--quiet",
    ]


def convert(checkpoint: str, output: str, *extra: str) -> Callable[[Path], list[str]]:
    return lambda w: ["convert", "official", str(w / checkpoint), str(w / output), *FIXTURE_HEADS, *extra]


MISSING = rf"1 tensors missing from the weights: {BROKEN_TENSOR} \(pass allow_missing_weights=True"
NON_FINITE = rf"1 tensors hold NaN or infinite values: {BROKEN_TENSOR}"
NO_TASKS = "the config has no 'tasks' list"
TRUNCATED = r"model\.safetensors is truncated or corrupt \(.*incomplete metadata"
TEXT_SIZE = "config field 'hidden_size' must be of type int, got str '768'"
CASES = [
    Case("predict, tensor missing", predict("missing", "--output", "{w}/earlier.jsonl"), MISSING),
    Case("export, tensor missing", export("missing"), MISSING),
    Case("predict, config without tasks", predict("no_tasks"), NO_TASKS),
    Case("evaluate, config without tasks", evaluate("no_tasks"), NO_TASKS),
    Case("predict, NaN weights", predict("nan"), NON_FINITE),
    Case("export, NaN weights", export("nan"), NON_FINITE),
    Case("predict, truncated safetensors", predict("truncated", "--output", "{w}/earlier.jsonl"), TRUNCATED),
    Case("export, truncated safetensors", export("truncated"), TRUNCATED),
    Case("evaluate, truncated safetensors", evaluate("truncated"), TRUNCATED),
    Case("push, truncated safetensors", lambda w: ["push", str(w / "truncated"), "tester/tiny"], TRUNCATED),
    Case("predict, hidden_size as text", predict("text_size"), TEXT_SIZE),
    Case("summary, hidden_size as text", lambda w: ["summary", str(w / "text_size")], TEXT_SIZE),
    Case("summary, empty folder", lambda w: ["summary", str(w / "empty")], r"empty: not a model folder \(no config"),
    Case("export, negative size", export("good", "--size", "-16"), "positive crop side in pixels, got -16"),
    Case(
        "convert, heads not dividing the width",
        convert("official.pth.tar", "new", "--encoder-heads", "7"),
        "encoder width 32 is not divisible by its 7 attention heads",
    ),
    Case(
        "convert, over an existing folder",
        convert("official.pth.tar", "converted"),
        r"converted: folder exists and is not empty; pass --overwrite",
    ),
    Case(
        "convert, infinite weights",
        convert("inf.pth.tar", "new"),
        r"1 tensors hold NaN or infinite values: decoder\.query_features\.\w+; refusing to write them",
    ),
    Case(
        "convert, into the checkpoint's folder",
        convert("official.pth.tar", ".", "--overwrite"),
        r"holds the input .*official\.pth\.tar; write the model to another folder",
    ),
    Case(
        "predict, no preprocessor_config.json",
        predict("no_processor"),
        r"no_processor: no preprocessor_config\.json; a model folder needs the image processor it was trained with",
    ),
    Case(
        "predict, preprocessor_config.json not JSON",
        predict("processor_not_json"),
        r"processor_not_json/preprocessor_config\.json: not a readable JSON object \(",
    ),
    Case("predict, std 0", predict("std_zero"), r"dense_std \[0\.0, 0\.0, 0\.0\]: must be positive"),
    Case("predict, crop size 0", predict("size_zero"), r"face_size 0: crop sides must be whole numbers in 16\.\.2048"),
    Case(
        "predict, crop size 60000",
        predict("size_60000"),
        r"dense_size 60000: crop sides must be whole numbers in 16\.\.2048",
    ),
    Case(
        "predict, absurd config size",
        predict("absurd_size"),
        r"config\.json \(intermediate_size 100000000000\) does not match the weights: "
        r"encoder\.layers\.0\.mlp\.fc1\.\w+ is \(64(, 32)?,?\) in model\.safetensors",
    ),
    Case(
        "convert --overwrite onto a link",
        convert("official.pth.tar", "linked", "--overwrite"),
        r"linked: is a link \(to .*elsewhere\); give the folder itself",
    ),
    Case(
        "push --space with an invalid name",
        lambda w: ["push", str(w / "good"), "tester/tiny", "--space", "not a/valid name!"],
        r"--space not a/valid name!: not a valid Space name \(",
    ),
    Case(
        "push, closed port",
        None,
        r"push to tester/tiny failed: cannot reach http://127\.0\.0\.1:\d+ \(ConnectError",
        network="closed port",
    ),
    Case(
        "push, server never answers",
        None,
        rf"push to tester/tiny failed: no answer from http://127\.0\.0\.1:\d+ within {PUSH_TIMEOUT_S} s \(\w*Timeout",
        network="never answers",
    ),
]


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.network else []) for case in CASES]
)
def test_fault_gives_one_line_and_changes_nothing(case, workspace, request, capsys):
    if case.network:
        result = request.getfixturevalue("push_results")[case.network]
        status, err, changed = result["status"], result["stderr"], result["changed"]
        assert result["seconds"] < 60, f"the push took {result['seconds']:.0f} s to fail"
    else:
        before = tree_digest(workspace)
        arguments = [argument.format(w=workspace) for argument in case.argv(workspace)]
        status, _, err = run_cli(arguments, capsys)
        changed = tree_digest(workspace) != before
    assert status == case.status, err
    assert err.startswith("faceptor: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(case.message, err), err
    assert not changed, "an input or an earlier output changed"
    leftovers = [path.name for path in workspace.iterdir() if ".partial-" in path.name or path.name.endswith(".tmp")]
    assert not leftovers and not (workspace / "new").exists()


def test_export_onto_a_full_disk_names_the_disk_and_keeps_the_earlier_graph(workspace, monkeypatch, capsys):
    from faceptor.commands import export as export_module

    def half_written_then_full(model, path, **options):
        Path(path).write_bytes(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "export_onnx", half_written_then_full)
    before = tree_digest(workspace)
    status, _, err = run_cli(export("good")(workspace), capsys)
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    pattern = r"^faceptor: error: .*earlier\.onnx: the disk is full \(No space left on device\); nothing was replaced$"
    assert re.search(pattern, err), err
    assert tree_digest(workspace) == before
    assert not [path.name for path in workspace.iterdir() if path.name.endswith(".tmp")]


@pytest.mark.slow
def test_the_server_that_never_answers_is_given_up_after_the_timeout(push_results):
    assert push_results["never answers"]["seconds"] < PUSH_TIMEOUT_S + 15


# ------------------------------------------------------------------------------------------ the opt-ins


def test_missing_weights_are_warned_by_from_pretrained_and_refused_by_the_loaders(workspace):
    # transformers' convention: the model loads, the tensor is initialised, reported and warned about by name.
    with CaptureLogger(logging.get_logger("transformers.modeling_utils")) as captured:
        model, info = FaceptorModel.from_pretrained(workspace / "missing", output_loading_info=True)
    assert set(info["missing_keys"]) == {BROKEN_TENSOR} and BROKEN_TENSOR in captured.out
    assert torch.isfinite(model.decoder.query_features["age_morph2"]).all()
    with pytest.raises(ValueError, match=MISSING):
        FaceptorModel.from_pretrained(workspace / "missing", allow_missing_weights=False)  # the strict opt-in
    # The project's loaders refuse it: the commands' loader and the pipeline, each with its opt-out.
    with pytest.raises(CommandError, match=MISSING):
        load_model_folder(workspace / "missing")
    assert set(load_model_folder(workspace / "missing", allow_missing_weights=True).task_specs) == set(model.task_specs)
    with pytest.raises(ValueError, match=MISSING):
        pipeline("face-perception", model=str(workspace / "missing"), detector=None)
    loaded = pipeline("face-perception", model=str(workspace / "missing"), detector=None, allow_missing_weights=True)
    assert loaded.model.task_specs.keys() == model.task_specs.keys()
    with pytest.raises(ValueError, match=NON_FINITE):
        pipeline("face-perception", model=str(workspace / "nan"), detector=None)


def test_convert_overwrite_replaces_the_folder_whole(workspace, tmp_path, capsys):
    output = tmp_path / "model"
    output.mkdir()
    (output / "stale.txt").write_text("from an earlier conversion\n")
    status, out, err = run_cli(
        ["convert", "official", str(OFFICIAL), str(output), *FIXTURE_HEADS, "--overwrite"], capsys
    )
    assert status == 0, err
    assert not (output / "stale.txt").exists() and (output / "model.safetensors").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["model"]  # no staging or replaced folder left
    assert FaceptorModel.from_pretrained(output).config.num_attention_heads == 2


def test_packed_pipeline_errors_are_reduced_to_their_cause(workspace, tmp_path):
    # A folder without weights: transformers' pipeline factory packs from_pretrained's error with its traceback.
    folder = tmp_path / "no_weights"
    shutil.copytree(workspace / "good", folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="See the original errors") as error:
        pipeline("face-perception", model=str(folder))
    assert "Traceback" in str(error.value)
    summary = error_summary(error.value)
    assert summary.startswith("OSError: ") and "model.safetensors" in summary and "\n" not in summary
