import os

# The Hub is unreachable here; without this a Hub look-up hangs ~25 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
