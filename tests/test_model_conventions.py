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


def test_model_takes_the_processors_default_output_and_returns_every_task():
    from PIL import Image

    from faceptor import FaceptorImageProcessor
    from faceptor.demo_model import DEMO_MODEL_DIR

    model = FaceptorModel.from_pretrained(DEMO_MODEL_DIR).eval()
    processor = FaceptorImageProcessor.from_pretrained(DEMO_MODEL_DIR)
    image = Image.open(DEMO_MODEL_DIR.parent / "assets" / "astronaut.jpg")
    box = [165, 30, 260, 150]
    with torch.no_grad():
        outputs = model(**processor(image, boxes=[box]))
        # The same as the call with the tasks named, as the pipeline makes it (the demo model's are all dense).
        named = model(**processor(image, boxes=[box], tasks=model.resolve_tasks(None)))
    assert list(outputs.task_outputs) == model.config.task_names
    torch.testing.assert_close(outputs.task_outputs, named.task_outputs)
    results = processor.post_process(outputs, model.resolve_tasks(), [(image.height, image.width)], [[box]])
    assert set(results) == set(model.config.task_names)
    for name, spec in model.task_specs.items():
        if spec.kind == "landmarks":  # on the face: within its crop
            points = results[name][0]
            assert ((points[:, 0] > 130) & (points[:, 0] < 300) & (points[:, 1] > 0) & (points[:, 1] < 190)).all()
        else:
            assert results[name][0].shape == (image.height, image.width) and results[name][0].max() > 0
    as_tuple = model(**processor(image, boxes=[box]), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple[1]) == len(model.config.task_names)


def test_every_crop_group_runs_its_own_tasks_and_the_outputs_merge_in_task_order():
    model = build(ARCHITECTURES["faceptor"])
    dense, face = torch.randn(BATCH, 3, 64, 64), pixels()
    tasks = ["age_morph2", "align_300w", "recog_ms1mv3", "parsing_celebam"]
    with torch.no_grad():
        merged = model(dense, tasks=tasks, pixel_values_face=face)
        on_face = model(face, tasks=["age_morph2", "recog_ms1mv3"])
        on_dense = model(dense, tasks=["align_300w", "parsing_celebam"])
        everything = model(dense, pixel_values_face=face)
    assert list(merged.task_outputs) == tasks and list(everything.task_outputs) == model.config.task_names
    for name in tasks:
        expected = (on_face if name in on_face.task_outputs else on_dense).task_outputs[name]
        torch.testing.assert_close(merged.task_outputs[name], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.last_hidden_state, on_dense.last_hidden_state)  # the dense pass's encoder
    with torch.no_grad(), pytest.raises(ValueError, match="read pixel_values"):
        model(pixel_values_face=face, tasks=["align_300w"])


def test_from_pretrained_reports_missing_tensors_and_initialises_them(tmp_path):
    from safetensors.torch import load_file, save_file

    model = FaceptorModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["decoder.query_features.age_morph2"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = FaceptorModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {"decoder.query_features.age_morph2"} or list(info["missing_keys"]) == [
        "decoder.query_features.age_morph2"
    ]
    assert torch.isfinite(loaded.decoder.query_features["age_morph2"]).all()
    torch.testing.assert_close(
        loaded.decoder.query_features["affect_rafdb"], model.decoder.query_features["affect_rafdb"]
    )


@pytest.mark.parametrize("model_class, config", [(FaceptorModel, tiny_config), (NaiveFaceptorModel, naive_tiny_config)])
def test_both_models_take_the_processors_default_output_and_return_every_task(model_class, config):
    import numpy as np

    from faceptor import FaceptorImageProcessor

    model = model_class(config()).eval()
    processor = FaceptorImageProcessor(dense_size=64, face_size=32)
    image = np.random.default_rng(0).integers(0, 256, (80, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        outputs = model(**processor(image))  # no arguments, as every transformers model card shows
        assert list(outputs.task_outputs) == model.config.task_names
        for spec in model.resolve_tasks():  # the same as each task on its own group's crops
            alone = model(**processor(image, tasks=[spec]))
            torch.testing.assert_close(outputs.task_outputs[spec.name], alone.task_outputs[spec.name])
