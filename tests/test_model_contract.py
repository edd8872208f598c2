"""The contract every architecture keeps (as timm tests each of its models), on a tiny config of each: gradients
reach every parameter, a save/load round trip keeps everything, gradient checkpointing changes no gradient, SDPA
and eager attention agree, and the saved folder loads as remote code in a fresh process. What only one
architecture has is tested in its own file (test_modeling.py, test_naive_faceptor.py)."""

import json

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from transformers import AutoModel

from conftest import assert_loads_as_remote_code, naive_tiny_config, tiny_config
from faceptor import FaceptorModel, NaiveFaceptorModel
from faceptor.modeling_faceptor import FaceptorIdentityHead

ARCHITECTURES = ["faceptor", "naive"]
MODEL_CLASS = {"faceptor": FaceptorModel, "naive": NaiveFaceptorModel}
CONFIG = {"faceptor": tiny_config, "naive": naive_tiny_config}
# Every optional parameter present: Faceptor's per-task layer embeddings.
WIDEST = {"faceptor": {"layer_embedding_scope": "per_task"}, "naive": {}}
AUTO_MAP = {
    "faceptor": {"AutoConfig": "configuration_faceptor.FaceptorConfig", "AutoModel": "modeling_faceptor.FaceptorModel"},
    "naive": {
        "AutoConfig": "configuration_naive_faceptor.NaiveFaceptorConfig",
        "AutoModel": "modeling_naive_faceptor.NaiveFaceptorModel",
    },
}


@pytest.fixture(params=ARCHITECTURES)
def architecture(request) -> str:
    return request.param


def build(architecture: str, **overrides):
    return MODEL_CLASS[architecture](CONFIG[architecture](**overrides))


def test_one_backward_pass_reaches_every_parameter_with_a_finite_gradient(architecture):
    model = build(architecture, drop_path_rate=0.1, **WIDEST[architecture]).train()
    for module in model.modules():
        if isinstance(module, FaceptorIdentityHead):
            # With batch statistics its second BatchNorm cancels the first one's bias exactly; running ones don't.
            module.eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    out = model(pixel_values)
    features = model.get_image_features(pixel_values).pooler_output
    outputs = {**out.task_outputs, "image_features": features}
    assert [name for name, value in outputs.items() if not torch.isfinite(value).all()] == []
    loss = sum((value * torch.randn_like(value)).mean() for value in outputs.values())
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert [name for name, p in model.named_parameters() if not torch.isfinite(p.grad).all()] == []


def test_save_and_load_round_trip_keeps_weights_tasks_and_outputs(architecture, tmp_path):
    model = build(architecture, **WIDEST[architecture]).eval()
    with torch.no_grad():  # running statistics unlike the init's, so a lost buffer would show
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    if architecture == "faceptor":  # a task added after construction travels too
        model.add_task({"name": "extra", "kind": "multilabel", "num_queries": 3})
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is MODEL_CLASS[architecture]
    assert loaded.config.task_names == model.config.task_names
    saved, restored = model.config.to_dict(), loaded.config.to_dict()
    for config in (saved, restored):
        config.pop("_name_or_path")
    assert restored == saved  # task specs, Naive Faceptor's task groups, every size
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert list(loaded_state) == list(state)
    for name, value in state.items():
        assert torch.equal(loaded_state[name], value), name
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, actual = model(pixel_values).task_outputs, loaded(pixel_values).task_outputs
    assert list(actual) == list(expected)
    # Equal to within 1e-6 of each output's scale, not bit-identical: tensors loaded from safetensors are not
    # 64-byte aligned, so vectorised kernels may round the last bits differently.
    for name, value in expected.items():
        scale = max(1.0, value.abs().max().item())
        torch.testing.assert_close(
            actual[name], value, rtol=0, atol=1e-6 * scale, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_gradient_checkpointing_gives_the_same_gradients(architecture):
    # Naive Faceptor's heads drop out outside the checkpointed layers: a second run would draw other masks.
    overrides = {"dense_dropout": 0.0, "attribute_dropout": 0.0} if architecture == "naive" else {}
    model = build(architecture, **overrides).train()
    pixel_values = torch.randn(2, 3, 32, 32)

    def gradients():
        model.zero_grad()
        out = model(pixel_values, tasks=["age_morph2", "align_300w"])
        sum(value.sum() for value in out.task_outputs.values()).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.encoder.layers)
    checkpointed = gradients()
    assert any(name.startswith("encoder.layers.") for name in plain)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(
            checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_sdpa_and_eager_attention_agree(architecture, monkeypatch):
    model = build(architecture).eval()
    sdpa_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        sdpa_calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    pixel_values = torch.randn(2, 3, 64, 64)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        sdpa_calls.clear()
        with torch.no_grad():
            outputs[implementation] = model(pixel_values).task_outputs
        # Each path is really taken: eager never calls SDPA, SDPA serves every encoder layer at least.
        if implementation == "eager":
            assert sdpa_calls == []
        else:
            assert len(sdpa_calls) >= model.config.num_hidden_layers
    assert list(outputs["sdpa"]) == model.config.task_names
    for name, value in outputs["eager"].items():
        torch.testing.assert_close(
            outputs["sdpa"][name], value, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.slow
def test_remote_code_loads_in_a_fresh_process_without_the_package(architecture, tmp_path):
    model = build(architecture).eval()
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["auto_map"] == AUTO_MAP[architecture]
    for name in {*(f"{module.split('.')[0]}.py" for module in AUTO_MAP[architecture].values()), "modeling_faceptor.py"}:
        assert (tmp_path / "model" / name).exists(), name  # Naive Faceptor's shared encoder travels along
    assert_loads_as_remote_code(model, tmp_path / "model", tmp_path)
