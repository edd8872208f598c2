import pytest
import torch

from conftest import tiny_config
from faceptor import FaceptorConfig, FaceptorModel


def run_all_tasks(model, batch_size=2, size=64, **kwargs):
    return model(torch.randn(batch_size, 3, size, size), **kwargs)


@pytest.mark.parametrize("scope", ["shared", "per_task"])
def test_every_task_has_the_documented_output_shape(scope):
    config = tiny_config(layer_embedding_scope=scope)
    model = FaceptorModel(config).eval()
    with torch.no_grad():
        out = run_all_tasks(model, batch_size=3, size=64)
    expected = {
        "recog_ms1mv3": (3, 24),
        "age_morph2": (3, 101),
        "biattr_celeba": (3, 40),
        "affect_affectnet": (3, 7),
        "affect_rafdb": (3, 7),
        "parsing_celebam": (3, 19, 16, 16),
        "align_300w": (3, 68, 16, 16),
    }
    assert {name: tuple(value.shape) for name, value in out.task_outputs.items()} == expected
    assert out.pixel_embeddings.shape == (3, 16, 16, 16)
    assert out.decoder_tokens["age_morph2"].shape == (3, 101, 16)
    assert "recog_ms1mv3" not in out.decoder_tokens
    assert all(torch.isfinite(value).all() for value in out.task_outputs.values())


def test_non_square_inputs_and_a_subset_of_tasks():
    model = FaceptorModel(tiny_config()).eval()
    out = model(torch.randn(1, 3, 48, 80), tasks=["parsing_celebam", "affect_rafdb"])
    assert list(out.task_outputs) == ["parsing_celebam", "affect_rafdb"]
    assert out.task_outputs["parsing_celebam"].shape == (1, 19, 12, 20)


def test_layer_attention_can_be_switched_off_per_task():
    tasks = [
        {"name": "reads_all", "kind": "age", "num_queries": 5},
        {"name": "reads_top", "kind": "age", "num_queries": 5, "use_layer_attention": False},
    ]
    model = FaceptorModel(tiny_config(tasks=tasks, decoder_feature_layers=[3, 1])).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(pixel_values).task_outputs
        model.decoder.input_projections[1].weight.add_(1.0)  # the projection of the lower level (layer 1)
        after = model(pixel_values).task_outputs
    torch.testing.assert_close(after["reads_top"], before["reads_top"], rtol=0, atol=0)
    assert not torch.allclose(after["reads_all"], before["reads_all"])


def test_per_task_layer_embeddings_belong_to_their_task_only():
    model = FaceptorModel(tiny_config(layer_embedding_scope="per_task")).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(pixel_values).task_outputs
        # A shift shared by all levels cancels in the softmax; only differences between levels matter.
        model.decoder.task_level_embeddings["affect_rafdb"].add_(torch.randn(2, 16))
        after = model(pixel_values).task_outputs
    torch.testing.assert_close(after["affect_affectnet"], before["affect_affectnet"], rtol=0, atol=0)
    assert not torch.allclose(after["affect_rafdb"], before["affect_rafdb"])


def test_unknown_task_and_bad_pixel_values_raise_value_errors():
    model = FaceptorModel(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"no task \['age_imdb'\].*age_morph2"):
        model(torch.randn(1, 3, 32, 32), tasks=["age_imdb"])
    with pytest.raises(ValueError, match="No task requested"):
        model(torch.randn(1, 3, 32, 32), tasks=[])
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        model(torch.randn(3, 32, 32))


def test_add_task_adds_only_query_sized_parameters():
    model = FaceptorModel(tiny_config(layer_embedding_scope="per_task")).eval()
    before_names = {name: p.clone() for name, p in model.named_parameters()}
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        old_outputs = model(pixel_values).task_outputs
    added = model.add_task({"name": "glasses", "kind": "classification", "labels": ["none", "reading", "sun"]})
    width, levels = model.config.decoder_hidden_size, len(model.config.decoder_feature_layers)
    assert added == 2 * 3 * width + levels * width
    new_names = {name for name, _ in model.named_parameters()} - set(before_names)
    assert new_names == {
        "decoder.query_features.glasses",
        "decoder.query_position_embeddings.glasses",
        "decoder.task_level_embeddings.glasses",
    }
    assert sum(p.numel() for name, p in model.named_parameters() if name in new_names) == added
    with torch.no_grad():
        new_outputs = model(pixel_values).task_outputs
    assert new_outputs["glasses"].shape == (2, 3)
    for name, value in old_outputs.items():
        torch.testing.assert_close(new_outputs[name], value, rtol=0, atol=0)
    assert model.config.task_specs["glasses"].labels == ["none", "reading", "sun"]
    with pytest.raises(ValueError, match="already has a task named 'glasses'"):
        model.add_task({"name": "glasses", "kind": "age", "num_queries": 3})


def test_add_task_of_a_new_category_creates_its_shared_output_module_once():
    config = tiny_config(tasks=[{"name": "age", "kind": "age", "num_queries": 7}])
    model = FaceptorModel(config).eval()
    assert not hasattr(model, "dense_head")
    added = model.add_task({"name": "points", "kind": "landmarks", "num_queries": 5})
    head_parameters = sum(p.numel() for p in model.dense_head.parameters()) + sum(
        p.numel() for p in model.pixel_decoder.parameters()
    )
    assert added == 2 * 5 * 16 + head_parameters
    assert model.add_task({"name": "more_points", "kind": "landmarks", "num_queries": 4}) == 2 * 4 * 16
    assert model(torch.randn(1, 3, 32, 32)).task_outputs["points"].shape == (1, 5, 8, 8)


def test_faceptor_base_counts_the_papers_103_2m_parameters():
    with torch.device("meta"):
        model = FaceptorModel(FaceptorConfig.from_preset("faceptor-base"))
    count = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
    total = sum(count.values())
    assert round(total / 1e6, 1) == 103.2
    assert round(count["encoder"] / 1e6, 1) == 86.8
    assert round(count["decoder"] / 1e6, 1) == 14.7
    assert round(count["pixel_decoder"] / 1e6, 1) == 0.5
    rest = count["dense_head"] + count["attribute_head"] + count["identity_head"]
    assert round(rest / 1e6, 1) == 1.2


def test_task_samples_decode_each_task_on_its_own_rows():
    model = FaceptorModel(tiny_config()).eval()
    pixel_values = torch.randn(5, 3, 32, 32)
    tasks = ["age_morph2", "affect_rafdb", "recog_ms1mv3"]
    with torch.no_grad():
        full = model(pixel_values, tasks=tasks).task_outputs
        split = model(
            pixel_values,
            tasks=tasks,
            task_samples={"age_morph2": slice(0, 2), "affect_rafdb": slice(2, 5), "recog_ms1mv3": slice(1, 4)},
        ).task_outputs
    torch.testing.assert_close(split["age_morph2"], full["age_morph2"][0:2])
    torch.testing.assert_close(split["affect_rafdb"], full["affect_rafdb"][2:5])
    torch.testing.assert_close(split["recog_ms1mv3"], full["recog_ms1mv3"][1:4])


@pytest.mark.parametrize("scope", ["shared", "per_task"])
def test_batched_decoding_equals_the_per_task_loop(scope):
    tasks = [
        {"name": "age", "kind": "age", "num_queries": 11},
        {"name": "mood", "kind": "classification", "num_queries": 4, "use_layer_attention": False},
        {"name": "points", "kind": "landmarks", "num_queries": 6},
        {"name": "regions", "kind": "parsing", "num_queries": 3, "use_layer_attention": False},
        {"name": "identity", "kind": "embedding"},
    ]
    config = tiny_config(tasks=tasks, layer_embedding_scope=scope, decoder_feature_layers=[3, 0, 1, 2])
    model = FaceptorModel(config).eval()
    pixel_values = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        batched = model(pixel_values)
        for spec in tasks:
            alone = model(pixel_values, tasks=spec["name"])
            torch.testing.assert_close(
                batched.task_outputs[spec["name"]], alone.task_outputs[spec["name"]], rtol=1e-5, atol=1e-5
            )


def test_weights_missing_from_a_checkpoint_are_initialised_not_garbage(tmp_path):
    from safetensors.torch import load_file, save_file

    model = FaceptorModel(tiny_config(layer_embedding_scope="per_task"))
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = [
        "decoder.query_features.age_morph2",
        "decoder.query_position_embeddings.age_morph2",
        "decoder.task_level_embeddings.age_morph2",
        "identity_head.batch_norm1.running_var",
        "encoder.embeddings.position_embedding",
        "decoder.input_projections.1.weight",
    ]
    save_file({key: value for key, value in weights.items() if key not in dropped}, tmp_path / "model.safetensors")
    loaded = FaceptorModel.from_pretrained(tmp_path, allow_missing_weights=True)  # the opt-in; else an error
    state = loaded.state_dict()
    assert all(torch.isfinite(state[key]).all() for key in dropped)
    assert torch.equal(state["identity_head.batch_norm1.running_var"], torch.ones(32))
    positions = state["decoder.query_position_embeddings.age_morph2"]
    assert positions.min() >= 0 and positions.max() <= 1  # the official U(0, 1)
    assert 0.5 < state["decoder.query_features.age_morph2"].std() < 1.5  # the official N(0, 1)
    assert state["encoder.embeddings.position_embedding"].std() < 0.5  # width^-0.5 scale, not garbage
