"""FaceptorModel and NaiveFaceptorModel follow transformers' model-output conventions, which generic tools rely on
(`outputs[0]`, `return_dict=False`, `hidden_states`, `attentions`, `get_image_features`, `get_input_embeddings`,
SDPA vs eager, torch.export)."""

import dataclasses

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from conftest import TINY, naive_tiny_config, tiny_config
from faceptor import FaceptorModel, FaceptorOutput
from faceptor.modeling_naive_faceptor import NaiveFaceptorModel

BATCH, SIZE = 2, 32
NUM_TOKENS = 1 + (SIZE // 16) ** 2  # class token + a 2x2 patch grid
ARCHITECTURES = {"faceptor": (FaceptorModel, tiny_config), "naive": (NaiveFaceptorModel, naive_tiny_config)}


@pytest.fixture(params=list(ARCHITECTURES))
def architecture(request):
    return ARCHITECTURES[request.param]


def build(architecture, attn_implementation: str = "sdpa", **overrides):
    model_class, config_fn = architecture
    config = config_fn(**overrides)
    config._attn_implementation = attn_implementation
    return model_class(config).eval()


def pixels(batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE)


def test_the_first_output_is_the_encoders_last_hidden_state_and_tasks_stay_by_name(architecture):
    model = build(architecture)
    with torch.no_grad():
        out = model(pixels())
    assert isinstance(out, FaceptorOutput)
    assert torch.is_tensor(out[0]) and out[0] is out.last_hidden_state
    assert out.last_hidden_state.shape == (BATCH, NUM_TOKENS, TINY["hidden_size"])
    assert list(out.task_outputs) == model.config.task_names
    assert out.hidden_states is None and out.attentions is None


def test_the_tuple_output_holds_only_tensors_in_the_documented_order(architecture):
    model = build(architecture, "eager")
    tasks = ["affect_rafdb", "recog_ms1mv3", "parsing_celebam"]
    inputs = pixels()
    with torch.no_grad():
        as_tuple = model(inputs, tasks=tasks, return_dict=False, output_hidden_states=True, output_attentions=True)
        as_dict = model(inputs, tasks=tasks, output_hidden_states=True, output_attentions=True)

    def tensors_only(value) -> bool:
        return torch.is_tensor(value) or (isinstance(value, tuple) and all(map(tensors_only, value)))

    assert isinstance(as_tuple, tuple) and all(map(tensors_only, as_tuple))
    present = [f.name for f in dataclasses.fields(FaceptorOutput) if getattr(as_dict, f.name) is not None]
    expected = ["last_hidden_state", "task_outputs", "decoder_tokens", "pixel_embeddings", "hidden_states"]
    if isinstance(model, NaiveFaceptorModel):
        expected = ["last_hidden_state", "task_outputs", "hidden_states"]
    assert present == [*expected, "attentions"]
    assert len(as_tuple) == len(present)
    # The per-task dict becomes its values in the order of the requested tasks.
    for actual, name in zip(as_tuple[1], tasks, strict=True):
        torch.testing.assert_close(actual, as_dict.task_outputs[name], rtol=0, atol=0)
    torch.testing.assert_close(as_tuple, as_dict.to_tuple(), rtol=0, atol=0)


def test_hidden_states_are_the_embeddings_and_every_layer(architecture):
    model = build(architecture)
    inputs = pixels()
    with torch.no_grad():
        out = model(inputs, output_hidden_states=True)
        model.config.output_hidden_states = True  # the config's default is honoured too
        from_config = model(inputs)
    layers = model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1 == len(from_config.hidden_states)
    assert all(h.shape == (BATCH, NUM_TOKENS, TINY["hidden_size"]) for h in out.hidden_states)
    assert out.hidden_states[-1] is out.last_hidden_state
    embeddings = model.encoder.pre_layernorm(model.encoder.embeddings(inputs)[0])
    torch.testing.assert_close(out.hidden_states[0], embeddings)
    # faceptor 0.1's `encoder_hidden_states` (hidden_states[1:]) is gone: one name for one thing
    assert not hasattr(out, "encoder_hidden_states") and "encoder_hidden_states" not in out


def test_attentions_under_eager_and_none_under_sdpa(architecture):
    inputs = pixels()
    eager = build(architecture, "eager")
    with torch.no_grad():
        out = eager(inputs, output_attentions=True)
    heads = TINY["num_attention_heads"]
    assert len(out.attentions) == eager.config.num_hidden_layers
    assert all(a.shape == (BATCH, heads, NUM_TOKENS, NUM_TOKENS) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(BATCH, heads, NUM_TOKENS))
    sdpa = build(architecture, "sdpa")
    with torch.no_grad():
        assert sdpa(inputs, output_attentions=True).attentions is None  # SDPA does not compute the weights


def test_get_image_features_returns_the_clip_embedding_as_pooler_output(architecture):
    model = build(architecture)
    inputs = pixels()
    with torch.no_grad():
        features = model.get_image_features(inputs)
        with_hidden = model.get_image_features(inputs, output_hidden_states=True)
        as_tuple = model.get_image_features(inputs, return_dict=False)
        last = model(inputs, tasks="recog_ms1mv3").last_hidden_state
    assert isinstance(features, BaseModelOutputWithPooling)
    torch.testing.assert_close(features.last_hidden_state, last)
    encoder = model.encoder
    torch.testing.assert_close(features.pooler_output, encoder.projection(encoder.post_layernorm(last[:, 0])))
    assert features.pooler_output.shape == (BATCH, TINY["projection_dim"])
    assert features.hidden_states is None
    assert len(with_hidden.hidden_states) == model.config.num_hidden_layers + 1
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], features.pooler_output)


def test_get_input_embeddings_is_the_patch_embedding(architecture):
    model = build(architecture)
    assert model.get_input_embeddings() is model.encoder.embeddings.patch_embedding
    replacement = nn.Conv2d(3, TINY["hidden_size"], 16, stride=16, bias=False)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement


def test_sdpa_and_eager_give_the_same_outputs(architecture):
    sdpa = build(architecture, "sdpa")
    eager = build(architecture, "eager")
    eager.load_state_dict(sdpa.state_dict())
    inputs = pixels()
    with torch.no_grad():
        expected = eager(inputs, output_hidden_states=True)
        actual = sdpa(inputs, output_hidden_states=True)
    torch.testing.assert_close(actual.hidden_states, expected.hidden_states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual.task_outputs, expected.task_outputs, rtol=1e-5, atol=1e-5)


class TaskSetForward(nn.Module):
    """The model's forward for a fixed task set: the module torch.export traces."""

    def __init__(self, model: nn.Module, tasks: list[str]):
        super().__init__()
        self.model = model
        self.tasks = tasks

    def forward(self, pixel_values: torch.Tensor) -> FaceptorOutput:
        return self.model(pixel_values, tasks=self.tasks)


def test_torch_export_of_a_fixed_task_set(architecture):
    overrides = {}
    if architecture[0] is FaceptorModel:
        # A task that reads the top level only, so the decoder's cross-attention mask is traced too.
        config = tiny_config()
        overrides["tasks"] = [{**spec, "use_layer_attention": spec["name"] != "age_morph2"} for spec in config.tasks]
    model = build(architecture, **overrides)
    tasks = ["age_morph2", "affect_rafdb", "recog_ms1mv3", "align_300w"]
    graph = TaskSetForward(model, tasks).eval()
    inputs = pixels()
    with torch.no_grad():
        exported = torch.export.export(graph, (inputs,))
        actual = exported.module()(inputs)
        expected = graph(inputs)
    assert isinstance(actual, FaceptorOutput) and list(actual.task_outputs) == tasks
    torch.testing.assert_close(actual.task_outputs, expected.task_outputs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, rtol=1e-5, atol=1e-5)
