import os

# The Hub is unreachable here; without this a Hub look-up hangs ~25 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from faceptor import FaceptorConfig  # noqa: E402

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


def tiny_config(**overrides) -> FaceptorConfig:
    """Faceptor-Base's seven tasks on a model small enough for a 2-core CPU."""
    values = {**TINY, "decoder_feature_layers": [3, 1], **overrides}
    preset = values.pop("preset", "faceptor-base")
    return FaceptorConfig.from_preset(preset, **values)


@pytest.fixture
def config() -> FaceptorConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_loads_as_remote_code(model, folder, workspace) -> None:
    """`model`, saved in `folder`, loads with `AutoModel.from_pretrained(..., trust_remote_code=True)` in a fresh
    process without the package imported, and gives bit-identical outputs for every task."""
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
            assert torch.equal(out[name], value), name
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
