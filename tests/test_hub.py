"""Hub push and task query sets, against a local Hub-API server (tests/hub_server.py) on 127.0.0.1.

`HF_ENDPOINT` is read when `huggingface_hub` is imported, and this process imported it long ago, so every Hub
client runs in a subprocess whose environment points at the local server. "A fresh environment with only torch
and transformers" is a subprocess run with `python -I` (no PYTHONPATH, no user site) and a meta-path finder
that refuses `faceptor`, which is installed editable here.

Each start of a client costs seconds (torch and transformers are imported), so two client processes do all the
work: one with the package (the pushes, the query set, the server check), then one fresh environment (every
load by repo id). Each runs its steps as named sections; a section that fails is reported with its traceback
and the others still run, so each test reads the outcome of its own sections.
"""

import copy
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hub_server import LocalHub
from huggingface_hub import ModelCard, ModelCardData, metadata_load
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from safetensors.torch import load_file
from skimage import data
from transformers import pipeline

from conftest import naive_tiny_config, tiny_config
from faceptor import FaceptorImageProcessor, FaceptorModel, NaiveFaceptorModel
from faceptor.commands.cards import HUB_PIPELINE_TAGS, PAPER_RESULTS, render_model_card
from faceptor.commands.push import remote_code_files
from faceptor.task_query_sets import FINGERPRINT_ALGORITHM

TOKEN = "hf_localTestToken0123456789abcdef"  # HF_TOKEN of every client
SECRET = "hf_pushSecretThatMustNeverBeWritten42"  # passed explicitly to the push that fails once
REPO = "tester/tiny-faceptor"
NAIVE_REPO = "tester/tiny-naive-faceptor"
BOX = [165, 30, 260, 150]  # the astronaut's face (x0, y0, x1, y1)
PIPELINE_TASKS = ["age_morph2", "affect_rafdb", "align_300w", "recog_ms1mv3"]
NAIVE_TASKS = ["age_morph2", "align_300w"]

BLOCK_FACEPTOR = """
import importlib.abc, sys

class _BlockFaceptor(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "faceptor" or name.startswith("faceptor."):
            raise ModuleNotFoundError(f"No module named {name!r} (a fresh environment)")
        return None

sys.meta_path.insert(0, _BlockFaceptor())
try:
    import faceptor  # noqa
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("faceptor is importable: the fresh environment is not fresh")
"""
SECTIONS = """
import json as _json, sys, traceback as _traceback

_outcomes = {}


def _section(name):
    def run(function):
        try:
            function()
        except BaseException:
            _outcomes[name] = _traceback.format_exc()
        else:
            _outcomes[name] = "ok"
    return run


def assert_same_outputs(actual, expected):
    # Equal to within 1e-6 of each output's scale: a model loaded from safetensors (not 64-byte aligned) may round
    # the last bits differently from the one in memory that computed `expected`.
    import torch

    assert list(actual) == list(expected), (list(actual), list(expected))
    for name, value in expected.items():
        scale = max(1.0, value.abs().max().item())
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6 * scale, msg=lambda m: name + ": " + m)
"""
SECTIONS_END = """
_outcomes["faceptor never imported"] = (
    "ok" if not [name for name in sys.modules if name.split(".")[0] == "faceptor"] else "the package was imported"
)
print("SECTION-OUTCOMES " + _json.dumps(_outcomes))
"""


def run_client(sections: dict[str, str], workspace, hub: LocalHub, fresh: bool = False) -> dict:
    """Runs the `sections` (name: code) in order in one client process. Returns each section's outcome ("ok" or
    its traceback), whether the process imported faceptor ("faceptor never imported"), and the process's
    stdout and stderr ("output")."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and "proxy" not in key.lower()
    }
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_TOKEN=TOKEN,
        HF_HOME=str(workspace / "hf_home"),
        HF_MODULES_CACHE=str(workspace / "hf_modules"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    code = (BLOCK_FACEPTOR if fresh else "") + SECTIONS
    for index, (name, script) in enumerate(sections.items()):
        code += f"\n\n@_section({name!r})\ndef _section_{index}():\n" + textwrap.indent(textwrap.dedent(script), "    ")
    code += SECTIONS_END
    command = [sys.executable, "-I", "-c", code] if fresh else [sys.executable, "-c", code]
    result = subprocess.run(
        command, cwd=workspace / "cwd", env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = f"{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stdout.splitlines() if line.startswith("SECTION-OUTCOMES ")]
    assert result.returncode == 0 and lines, (
        f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}\nserver: {hub.log[-10:]}"
    )
    return {**json.loads(lines[-1].removeprefix("SECTION-OUTCOMES ")), "output": output}


def assert_ran(outcomes: dict, *sections: str) -> None:
    for section in sections:
        assert outcomes[section] == "ok", f"section {section!r}:\n{outcomes[section]}"


def folder_digest(folder) -> dict[str, str]:
    return {
        os.path.relpath(os.path.join(root, name), folder): hashlib.sha256(
            open(os.path.join(root, name), "rb").read()
        ).hexdigest()
        for root, _, names in os.walk(folder)
        for name in names
    }


@pytest.fixture(scope="module")
def hub():
    with LocalHub(tokens={TOKEN, SECRET}) as server:
        yield server


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny Faceptor and Naive Faceptor folders with an image processor, inputs, and the outputs the pushed copies
    must give."""
    root = tmp_path_factory.mktemp("hub")
    (root / "cwd").mkdir()
    torch.manual_seed(0)
    model = FaceptorModel(tiny_config()).eval()
    model.save_pretrained(root / "model")
    FaceptorImageProcessor(dense_size=64, face_size=32).save_pretrained(root / "model")
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixel_values).task_outputs
    torch.save({"pixel_values": pixel_values, "expected": expected}, root / "io.pt")
    astronaut = data.astronaut()
    np.save(root / "astronaut.npy", astronaut)
    face = pipeline("face-perception", model=str(root / "model"), detector=None)
    result = face(astronaut, boxes=BOX, tasks=PIPELINE_TASKS)
    (root / "pipeline.json").write_text(json.dumps(result))
    naive = NaiveFaceptorModel(naive_tiny_config()).eval()
    naive.save_pretrained(root / "naive")
    with torch.no_grad():
        expected = naive(pixel_values, tasks=NAIVE_TASKS).task_outputs
    torch.save({"pixel_values": pixel_values, "expected": expected}, root / "naive_io.pt")
    return root


@pytest.fixture(scope="module")
def pushed(hub, workspace):
    """The client with the package: `faceptor push` of the model folder, whose first commit the server fails (the
    error surfaces, then the same command succeeds); Naive Faceptor's push; a query set (the base pulled from the
    Hub gets a new task with its own, changed, queries, pushed as a query set; the model with it is pushed too,
    through `model.push_to_hub`); the server's own API check."""
    before = folder_digest(workspace / "model")
    hub.fail_next_commits(1)
    sections = {}
    sections["push"] = f"""
        import argparse
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        from faceptor.commands.push import add_push_command, push_model_folder

        assert HfApi().whoami()["name"] == "tester"
        try:
            push_model_folder({str(workspace / "model")!r}, {REPO!r}, token={SECRET!r})
        except HfHubHTTPError as error:
            print("first push failed", error.response.status_code)
        else:
            raise SystemExit("the injected failure did not surface")
        parser = argparse.ArgumentParser(prog="faceptor")
        add_push_command(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["push", {str(workspace / "model")!r}, {REPO!r}, "--token", {SECRET!r}])
        args.handler(args)
        """
    sections["naive push"] = f"""
        from faceptor.commands.push import push_model_folder

        push_model_folder({str(workspace / "naive")!r}, {NAIVE_REPO!r})
        """
    sections["query set"] = f"""
        import torch
        from faceptor import FaceptorModel

        model = FaceptorModel.from_pretrained({REPO!r}).eval()
        model.add_task({{"name": "glasses", "kind": "classification", "labels": ["none", "reading", "sun"]}})
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            model.decoder.query_features["glasses"].copy_(torch.randn(3, 16, generator=generator))
            model.decoder.query_position_embeddings["glasses"].mul_(-2.0)
        model.push_task_to_hub("glasses", "tester/glasses", base_model={REPO!r}, commit_message="glasses queries")
        io = torch.load({str(workspace / "io.pt")!r})
        with torch.no_grad():
            outputs = model(io["pixel_values"], tasks=["glasses", "age_morph2"]).task_outputs
        torch.save(outputs, {str(workspace / "glasses.pt")!r})
        model.push_to_hub("tester/tiny-faceptor-glasses")
        """
    sections["server api"] = """
        import os
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        api = HfApi()
        assert api.whoami()["name"] == "tester"
        repo = api.create_repo("tester/api-check", exist_ok=True).repo_id
        api.create_repo(repo, exist_ok=True)
        info = api.upload_file(path_or_fileobj=b"x" * 5000, path_in_repo="deep/er/blob.bin", repo_id=repo)
        assert api.model_info(repo).sha == info.oid
        assert api.model_info(repo, revision=info.oid).sha == info.oid
        assert sorted(api.list_repo_files(repo)) == [".gitattributes", "deep/er/blob.bin"]
        assert [entry.path for entry in api.list_repo_tree(repo)] == [".gitattributes", "deep"]
        assert [entry.size for entry in api.get_paths_info(repo, ["deep/er/blob.bin", "nope"])] == [5000]
        api.create_branch(repo, branch="dev")
        api.upload_file(path_or_fileobj=b"dev", path_in_repo="dev.txt", repo_id=repo, revision="dev")
        assert not api.file_exists(repo, "dev.txt") and api.file_exists(repo, "dev.txt", revision="dev")
        path = hf_hub_download(repo, "deep/er/blob.bin")
        assert open(path, "rb").read() == b"x" * 5000
        folder = snapshot_download(repo, revision="dev")
        assert sorted(os.listdir(folder)) == [".gitattributes", "deep", "dev.txt"]
        for call, error in (
            (lambda: hf_hub_download(repo, "missing.txt"), EntryNotFoundError),
            (lambda: hf_hub_download(repo, "dev.txt", revision="nope"), RevisionNotFoundError),
            (lambda: hf_hub_download("tester/absent", "x.txt"), RepositoryNotFoundError),
        ):
            try:
                call()
            except error:
                pass
            else:
                raise AssertionError(error)
        try:
            api.create_repo("tester/forbidden", token="hf_wrong")
        except Exception as error:
            assert error.response.status_code == 401
        else:
            raise AssertionError("a write without a valid token was accepted")
        """
    return {**run_client(sections, workspace, hub), "before": before}


@pytest.fixture(scope="module")
def fresh(hub, workspace, pushed):
    """The fresh environment (torch and transformers, no faceptor): everything pushed loads by repo id."""
    sections = {}
    sections["model and pipeline"] = f"""
        import json
        import numpy as np
        import torch
        from transformers import AutoModel, pipeline

        model = AutoModel.from_pretrained({REPO!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        io = torch.load({str(workspace / "io.pt")!r})
        with torch.no_grad():
            outputs = model(io["pixel_values"]).task_outputs
        assert_same_outputs(outputs, io["expected"])
        face = pipeline(model={REPO!r}, trust_remote_code=True)
        result = face(np.load({str(workspace / "astronaut.npy")!r}), boxes={BOX!r}, tasks={PIPELINE_TASKS!r})
        assert result == json.load(open({str(workspace / "pipeline.json")!r})), result
        """
    sections["query set"] = f"""
        import torch
        from transformers import AutoModel

        expected = torch.load({str(workspace / "glasses.pt")!r})
        io = torch.load({str(workspace / "io.pt")!r})
        model = AutoModel.from_pretrained({REPO!r}, trust_remote_code=True).eval()
        spec = model.load_task("tester/glasses")
        assert spec.name == "glasses" and model.config.task_names[-1] == "glasses"

        def check(model):
            # The same weights file as the query set's maker loaded: bit-identical.
            with torch.no_grad():
                outputs = model(io["pixel_values"], tasks=["glasses", "age_morph2"]).task_outputs
            for name, value in expected.items():
                assert torch.equal(outputs[name], value), name

        check(model)
        try:
            model.load_task("tester/glasses")
        except ValueError as error:
            assert "already has a task named 'glasses'" in str(error) and "overwrite=True" in str(error), error
        else:
            raise AssertionError("loading an existing task without overwrite=True was accepted")
        model.load_task("tester/glasses", overwrite=True)
        check(model)

        other = AutoModel.from_pretrained({REPO!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            other.encoder.layers[0].mlp.fc1.bias.add_(1e-3)
        theirs = model.base_fingerprint()
        try:
            other.load_task("tester/glasses")
        except ValueError as error:
            assert theirs in str(error) and other.base_fingerprint() in str(error), error
        else:
            raise AssertionError("a query set of another base was accepted")
        assert "glasses" not in other.config.task_names

        model.save_task("glasses", {str(workspace / "resaved")!r})  # without the package: the plain card
        card = open({str(workspace / "resaved" / "README.md")!r}).read()
        assert theirs in card and "load_task" in card, card
        model.push_to_hub("tester/pushed-by-transformers")  # without the package: transformers' own push
        """
    sections["naive"] = f"""
        import torch
        from transformers import AutoModel, pipeline

        model = AutoModel.from_pretrained({NAIVE_REPO!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "NaiveFaceptorModel"
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        io = torch.load({str(workspace / "naive_io.pt")!r})
        with torch.no_grad():
            outputs = model(io["pixel_values"], tasks={NAIVE_TASKS!r}).task_outputs
        assert_same_outputs(outputs, io["expected"])
        face = pipeline(model={NAIVE_REPO!r}, trust_remote_code=True)
        assert type(face).__name__ == "FacePerceptionPipeline"
        """
    return run_client(sections, workspace, hub, fresh=True)


@pytest.mark.slow
def test_pushed_model_loads_and_runs_in_a_fresh_environment(hub, pushed, fresh):
    assert_ran(pushed, "push")
    files = hub.files(REPO)
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "modeling_faceptor.py",
        "configuration_faceptor.py",
        "task_query_sets.py",
        "image_processing_faceptor.py",
        "pipeline_faceptor.py",
    } <= set(files)
    # Exactly the listed remote code travels: no tool (cli, push, cards, converters), no training file.
    assert {name for name in files if name.endswith(".py")} == set(remote_code_files())
    assert not any(name.startswith(("training", "task_query_sets/")) for name in files)
    config = json.loads(files["config.json"])
    assert config["custom_pipelines"]["face-perception"]["impl"] == "pipeline_faceptor.FacePerceptionPipeline"
    assert config["auto_map"]["AutoModel"] == "modeling_faceptor.FaceptorModel"
    assert_ran(fresh, "model and pipeline", "faceptor never imported")


@pytest.mark.slow
def test_query_set_attaches_to_the_base_pulled_from_the_hub(hub, pushed, fresh):
    assert_ran(pushed, "query set")
    files = hub.files("tester/glasses")
    assert set(files) == {".gitattributes", "README.md", "task_query_set.json", "task_query_set.safetensors"}
    assert len(files["task_query_set.safetensors"]) < 2000  # only the task's queries travel
    description = json.loads(files["task_query_set.json"])
    assert description["task"]["labels"] == ["none", "reading", "sun"]
    copy = hub.files("tester/tiny-faceptor-glasses")
    assert "pipeline_faceptor.py" in copy and "preprocessor_config.json" in copy
    assert "glasses" in [task["name"] for task in json.loads(copy["config.json"])["tasks"]]
    assert json.loads(copy["preprocessor_config.json"])["dense_size"] == 64  # the processor saved with the model
    assert_ran(fresh, "query set", "faceptor never imported")
    plain = hub.files("tester/pushed-by-transformers")
    assert {"config.json", "model.safetensors", "modeling_faceptor.py", "task_query_sets.py"} <= set(plain)


@pytest.mark.slow
def test_local_hub_serves_what_the_client_calls(hub, pushed):
    """The server itself: whoami, repos, a commit, branches, model info, tree, paths-info, downloads, errors."""
    assert_ran(pushed, "server api")
    assert not hub.unknown, hub.unknown


# --------------------------------------------------------------------------------- query sets, locally


def independent_fingerprint(weights: dict[str, torch.Tensor], task_names: list[str]) -> str:
    """The documented fingerprint, recomputed from a safetensors state dict without the model."""
    containers = ("query_features", "query_position_embeddings", "task_level_embeddings")
    owned = {f"decoder.{container}.{name}" for container in containers for name in task_names}
    digest = hashlib.sha256(FINGERPRINT_ALGORITHM.encode() + b"\n")
    for key, tensor in sorted(weights.items()):
        if key in owned or key.endswith("num_batches_tracked"):
            continue
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        array = tensor.contiguous().numpy()
        digest.update(f"{key}\t{array.dtype.name}\t{list(tensor.shape)}\n".encode())
        digest.update(hashlib.sha256(array.astype(array.dtype.newbyteorder("<")).tobytes()).digest())
    return digest.hexdigest()


def test_fingerprint_is_the_documented_digest_of_the_shared_weights(tmp_path):
    model = FaceptorModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    fingerprint = model.base_fingerprint()
    assert fingerprint == independent_fingerprint(weights, model.config.task_names)
    assert FaceptorModel.from_pretrained(tmp_path).base_fingerprint() == fingerprint
    assert copy.deepcopy(model).to(torch.bfloat16).base_fingerprint() != fingerprint  # other values: another base
    model.add_task({"name": "glasses", "kind": "classification", "labels": ["none", "sun"]})
    with torch.no_grad():
        model.decoder.query_features["age_morph2"].add_(1.0)
    assert model.base_fingerprint() == fingerprint  # query sets are not part of the base
    # Any module kept per task (say, a task-specific level projection) travels with its set, not the base.
    model.decoder.task_projections = torch.nn.ModuleDict({"glasses": torch.nn.Linear(16, 16)})
    assert model.base_fingerprint() == fingerprint
    assert set(model.task_set_state_dict("glasses")) == {
        "decoder.query_features.glasses",
        "decoder.query_position_embeddings.glasses",
        "decoder.task_projections.glasses.weight",
        "decoder.task_projections.glasses.bias",
    }
    with torch.no_grad():
        model.identity_head.batch_norm1.running_var.mul_(1.5)
    assert model.base_fingerprint() != fingerprint


def test_query_set_refusals_and_overwrite(tmp_path):
    torch.manual_seed(1)
    trained = FaceptorModel(tiny_config()).eval()
    trained.save_pretrained(tmp_path / "base")
    trained.add_task({"name": "glasses", "kind": "classification", "labels": ["none", "reading", "sun"]})
    trained.save_task("glasses", tmp_path / "glasses")
    assert set(os.listdir(tmp_path / "glasses")) == {"README.md", "task_query_set.json", "task_query_set.safetensors"}

    another = FaceptorModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="another feature space") as refused:
        another.load_task(tmp_path / "glasses")
    assert trained.base_fingerprint() in str(refused.value) and another.base_fingerprint() in str(refused.value)
    assert "glasses" not in another.config.task_names

    narrower = FaceptorModel(tiny_config(decoder_hidden_size=8, decoder_ffn_dim=16))
    with pytest.raises(ValueError, match="decoder_hidden_size: set 16, model 8"):
        narrower.load_task(tmp_path / "glasses")
    per_task = FaceptorModel(tiny_config(layer_embedding_scope="per_task"))
    with pytest.raises(ValueError, match="layer_embedding_scope: set 'shared', model 'per_task'"):
        per_task.load_task(tmp_path / "glasses")

    base = FaceptorModel.from_pretrained(tmp_path / "base").eval()
    base.load_task(tmp_path / "glasses")
    with pytest.raises(ValueError, match="overwrite=True"):
        base.load_task(tmp_path / "glasses")
    # A set with another spec under the same name replaces the task whole (here: two classes instead of three).
    retrained = FaceptorModel.from_pretrained(tmp_path / "base").eval()
    retrained.add_task({"name": "glasses", "kind": "classification", "labels": ["no", "yes"]})
    retrained.save_task("glasses", tmp_path / "glasses2")
    base.load_task(tmp_path / "glasses2", overwrite=True)
    assert base.config.task_specs["glasses"].labels == ["no", "yes"]
    assert base.decoder.query_features["glasses"].shape == (2, 16)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = retrained(pixel_values, tasks=["glasses"]).task_outputs["glasses"]
        b = base(pixel_values, tasks=["glasses"]).task_outputs["glasses"]
    assert torch.equal(a, b)


def test_per_task_layer_embeddings_travel_with_the_set(tmp_path):
    model = FaceptorModel(tiny_config(layer_embedding_scope="per_task")).eval()
    model.save_pretrained(tmp_path / "base")
    model.add_task({"name": "smile", "kind": "multilabel", "labels": ["smiling"]})
    model.save_task("smile", tmp_path / "smile")
    tensors = load_file(tmp_path / "smile" / "task_query_set.safetensors")
    assert set(tensors) == {
        "decoder.query_features.smile",
        "decoder.query_position_embeddings.smile",
        "decoder.task_level_embeddings.smile",
    }
    base = FaceptorModel.from_pretrained(tmp_path / "base").eval()
    base.load_task(tmp_path / "smile")
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).task_outputs["smile"], base(pixel_values).task_outputs["smile"])


# ---------------------------------------------------------------------------------------------- cards


def test_cards_pass_metadata_validation_and_round_trips(tmp_path):
    model = FaceptorModel(tiny_config(preset="faceptor-full"))
    text = render_model_card(model, repo_id="tester/faceptor-full", paper_results="faceptor-full")
    (tmp_path / "README.md").write_text(text)
    metadata = metadata_load(tmp_path / "README.md")
    assert metadata["library_name"] == "transformers" and metadata["license"] == "mit"
    assert metadata["pipeline_tag"] in HUB_PIPELINE_TAGS
    assert "celebamask-hq" in metadata["datasets"] and "lapa" in metadata["datasets"]
    card = ModelCard(text)
    assert isinstance(card.data, ModelCardData) and card.data.model_name == "Faceptor-Full"
    assert ModelCardData(**metadata).to_dict() == card.data.to_dict()
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert eval_results_to_model_index(name, results) == metadata["model-index"]
    values = {
        (result.task_name.split("(")[-1].rstrip(")"), result.dataset_name, result.dataset_split): result
        for result in results
    }
    assert len(values) == len(PAPER_RESULTS["faceptor-full"]["results"]) == 18
    assert values["affect_rafdb", "RAF-DB", "test"].metric_value == 91.26
    assert values["align_aflw", "AFLW-19", "full"].metric_value == 0.95
    assert values["recog_ms1mv3", "CPLFW", "verification"].metric_value == 92.27
    assert all(result.source_url and result.task_type in HUB_PIPELINE_TAGS for result in results)
    assert 'pipeline(model="tester/faceptor-full", trust_remote_code=True)' in card.text
    assert "non-commercial" in card.text and "The code is MIT" in card.text

    base = FaceptorModel(tiny_config())  # Faceptor-Base's tasks: only the numbers of the tasks it has
    metadata = ModelCard(render_model_card(base, paper_results="faceptor-base")).data.to_dict()
    _, results = model_index_to_eval_results(metadata["model-index"])
    assert {result.dataset_name for result in results} >= {"300W", "MORPH II", "LFW"}
    assert "WFLW" not in {result.dataset_name for result in results}
    assert next(r for r in results if r.dataset_name == "MORPH II").metric_value == 1.869
    plain = ModelCard(render_model_card(base)).data.to_dict()  # random weights: no paper numbers, no datasets
    assert "model-index" not in plain and "datasets" not in plain

    base.add_task({"name": "glasses", "kind": "classification", "labels": ["none", "sun"]})
    base.save_task("glasses", tmp_path / "glasses", base_model="tester/tiny-faceptor", license="mit")
    task_card = ModelCard.load(tmp_path / "glasses" / "README.md")
    assert task_card.data.base_model == "tester/tiny-faceptor" and task_card.data.pipeline_tag in HUB_PIPELINE_TAGS
    assert ModelCardData(**task_card.data.to_dict()).to_dict() == task_card.data.to_dict()
    assert "none, sun" in task_card.text and base.base_fingerprint() in task_card.text
    assert 'model.load_task("THIS_REPO_OR_FOLDER")' in task_card.text


# ----------------------------------------------------------------------------------------- robustness


@pytest.mark.slow
def test_failed_push_leaves_the_folder_untouched_and_the_token_nowhere(hub, workspace, pushed):
    assert_ran(pushed, "push")
    assert "first push failed 500" in pushed["output"]
    assert hub.failed_commits == 1
    assert folder_digest(workspace / "model") == pushed["before"]
    assert len(hub.repos[REPO].commits) == 2  # the initial commit and the retry: the failed one left nothing
    for secret in (SECRET, TOKEN):
        assert secret not in pushed["output"]
        assert not any(secret.encode() in blob for blob in hub.stored_blobs())
        for root, _, names in os.walk(workspace):
            for name in names:
                with open(os.path.join(root, name), "rb") as handle:
                    assert secret.encode() not in handle.read(), os.path.join(root, name)
    assert not hub.unknown, hub.unknown


@pytest.mark.slow
def test_naive_faceptor_pushes_and_loads_by_repo_id(hub, pushed, fresh):
    """Naive Faceptor goes through the same push: remote code, pipeline and card (without query-set sections)."""
    assert_ran(pushed, "naive push")
    card = hub.files(NAIVE_REPO)["README.md"].decode()
    assert "Naive Faceptor" in card and "query set" not in card
    assert_ran(fresh, "naive", "faceptor never imported")
