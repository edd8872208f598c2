import argparse
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel, CLIPConfig, CLIPModel

from conftest import TINY, run_cli, tiny_config
from faceptor import FaceptorConfig, FaceptorImageProcessor, FaceptorModel
from faceptor.commands.convert import (
    CheckpointError,
    KeyMapper,
    _encoder_templates,
    _pack_attention,
    convert_farl,
    convert_official_checkpoint,
    resize_position_embedding,
    to_official_state_dict,
)
from faceptor.processing.geometry import heatmaps_to_points
from faceptor.task_presets import EXPRESSIONS, LAPA_CLASSES

FIXTURES = Path(__file__).parent / "fixtures" / "official"
# The fixture's reduced official model: encoder 32 wide with 2 heads, decoder 32 wide with 4 heads.
FIXTURE_HEADS = dict(encoder_heads=2, decoder_heads=4)
DENSE = ("parsing", "align")


@pytest.fixture(scope="module")
def golden():
    return load_file(FIXTURES / "golden_outputs.safetensors")


def assert_matches_official(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_converted_checkpoint_reproduces_the_official_outputs(stage, golden, tmp_path):
    report = convert_official_checkpoint(
        FIXTURES / f"faceptor_{stage}.pth.tar", tmp_path, keep_loss_weights=True, **FIXTURE_HEADS
    )
    model = AutoModel.from_pretrained(tmp_path).eval()
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is FaceptorImageProcessor
    assert model.config.decoder_feature_layers == ([11] if stage == "stage1" else [11, 1, 3, 5, 7, 9])
    assert len(model.config.tasks) == 13 and model.config.task_names[0] == "recog_ms1mv3"
    assert model.config.task_specs["affect_rafdb"].labels[0] == "neutral"
    assert set(report.dropped) == {f"heads_module.interpreters.map_v2.mask_map.1.ln.{p}" for p in ("weight", "bias")}
    with torch.no_grad():
        small = model(golden["inputs/pixels_112"], output_hidden_states=True)
        large = model(golden["inputs/pixels_128"])
    for layer in range(12):
        expected = golden[f"encoder/112/layer_{layer:02d}"]
        actual = small.hidden_states[layer + 1][:, 1:].transpose(1, 2).reshape(expected.shape)
        assert_matches_official(actual, expected, f"encoder layer {layer}")
    anchor = model.decoder.anchor_position(8, 8, torch.device("cpu"), torch.float32)
    assert_matches_official(anchor, golden["decoder_anchor_pos/8x8"][:, 0], "anchor positions")

    checked = set()
    for key, expected in golden.items():
        if not key.startswith(stage + "/"):
            continue
        _, task, what = key.split("/")
        out = large if task.startswith(DENSE) else small
        if what in ("logits", "maps", "embedding"):
            actual = out.task_outputs[task]
        elif what == "decoder_tokens":
            actual = out.decoder_tokens[task].transpose(0, 1)
        elif what == "landmarks":
            actual = heatmaps_to_points(out.task_outputs[task].sigmoid())
        elif what == "cosine":
            classifier = load_file(tmp_path / "training_state.safetensors")[
                "losses_module.losses.recog_ms1mv3.classifier"
            ]
            actual = F.normalize(out.task_outputs[task], dim=1) @ F.normalize(classifier, dim=1).t()
        elif what == "parsing_upsampled_sub5":
            upsampled = F.interpolate(out.task_outputs[task], (128, 128), mode="bilinear", align_corners=False)
            actual = upsampled.permute(0, 2, 3, 1)[:, 1::5, 1::5]
        else:
            raise AssertionError(f"unexpected fixture key {key}")
        assert_matches_official(actual, expected, key)
        checked.add(task)
    assert checked == set(model.config.task_names)


def random_official_layout_config(rng: random.Random, stage_two: bool) -> FaceptorConfig:
    layers = 12 if stage_two else rng.choice([3, 5])
    heads = rng.choice([1, 2, 4])
    decoder_heads = rng.choice([2, 4])
    tasks = [
        {"name": "recog_ms1mv3", "kind": "embedding"},
        {"name": "age_custom", "kind": "age", "num_queries": rng.randint(2, 9)},
        # Official names get the official labels back; other names keep their shape-inferred query count.
        {"name": "affect_rafdb", "kind": "classification", "labels": list(EXPRESSIONS)},
        {"name": "parsing_lapa", "kind": "parsing", "labels": list(LAPA_CLASSES)},
        {"name": "align_mine", "kind": "landmarks", "num_queries": rng.randint(1, 7)},
    ]
    return FaceptorConfig(
        hidden_size=8 * heads * rng.randint(1, 2),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=rng.choice([16, 24]),
        position_grid_size=rng.choice([4, 6]),
        projection_dim=rng.choice([4, 12]),
        decoder_hidden_size=4 * decoder_heads,
        decoder_layers=rng.randint(1, 3),
        decoder_attention_heads=decoder_heads,
        decoder_ffn_dim=rng.choice([8, 20]),
        decoder_feature_layers=[11, 1, 3, 5, 7, 9] if stage_two else [layers - 1],
        dense_mlp_layers=rng.randint(1, 3),
        identity_embedding_size=rng.choice([6, 10]),
        tasks=tasks,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("stage_two", [False, True])
def test_key_mapping_round_trip_on_random_shapes(seed, stage_two, tmp_path):
    config = random_official_layout_config(random.Random(seed * 2 + stage_two), stage_two)
    original = FaceptorModel(config).eval()
    with torch.no_grad():
        for buffer in original.buffers():
            buffer.copy_(torch.randint_like(buffer, 1, 5) if buffer.dtype == torch.long else torch.rand_like(buffer))
    official = to_official_state_dict(original.state_dict(), config)
    assert all(key.startswith(("backbone_module.visual.", "heads_module.")) for key in official)
    assert ("heads_module.decoder.new_level_embed.weight" in official) == stage_two
    checkpoint = {"step": 1, "state_dict": {"module." + key: value for key, value in official.items()}}
    checkpoint["state_dict"]["module.losses_module.losses.recog_ms1mv3.classifier"] = torch.randn(3, 4)
    torch.save(checkpoint, tmp_path / "ckpt.pth.tar")
    report = convert_official_checkpoint(
        tmp_path / "ckpt.pth.tar",
        tmp_path / "out",
        encoder_heads=config.num_attention_heads,
        decoder_heads=config.decoder_attention_heads,
    )
    assert "losses_module.losses.recog_ms1mv3.classifier" in report.dropped
    converted = FaceptorModel.from_pretrained(tmp_path / "out")
    inferred = converted.config.to_dict()
    for name in (
        "hidden_size",
        "num_hidden_layers",
        "intermediate_size",
        "position_grid_size",
        "projection_dim",
        "decoder_hidden_size",
        "decoder_layers",
        "decoder_ffn_dim",
        "decoder_feature_layers",
        "dense_mlp_layers",
        "identity_embedding_size",
        "tasks",
    ):
        assert inferred[name] == config.to_dict()[name], name
    converted_state = converted.state_dict()
    assert converted_state.keys() == original.state_dict().keys()
    for key, value in original.state_dict().items():
        assert torch.equal(converted_state[key], value), key


def test_unknown_keys_are_reported_not_dropped(tmp_path):
    checkpoint = torch.load(FIXTURES / "faceptor_stage1.pth.tar", weights_only=True)
    checkpoint["state_dict"]["module.heads_module.decoder.mystery.weight"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "ckpt.pth.tar")
    with pytest.raises(CheckpointError, match="does not know.*heads_module.decoder.mystery.weight"):
        convert_official_checkpoint(tmp_path / "ckpt.pth.tar", tmp_path / "out", **FIXTURE_HEADS)
    assert not (tmp_path / "out").exists()


def make_bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = (FIXTURES / "faceptor_stage1.pth.tar").read_bytes()
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.pth").write_text("this is not a checkpoint\n")
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "needs_code.pth")
    torch.save({"state_dict": {"module.encoder.weight": torch.zeros(1)}}, tmp_path / "other_model.pth")
    torch.save([torch.zeros(1)], tmp_path / "a_list.pth")
    return {
        "missing": (tmp_path / "missing.pth", "no such file"),
        "empty": (tmp_path / "empty.pth", "empty file"),
        "truncated": (tmp_path / "truncated.pth", "truncated or corrupt"),
        "text": (tmp_path / "text.pth", "truncated or corrupt"),
        "needs_code": (tmp_path / "needs_code.pth", "refused, the pickle needs more"),
        "other_model": (tmp_path / "other_model.pth", "not an official Faceptor checkpoint"),
        "a_list": (tmp_path / "a_list.pth", "expected a dict"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "text", "needs_code", "other_model", "a_list"])
def test_bad_files_get_clear_errors(case, tmp_path):
    path, message = make_bad_files(tmp_path)[case]
    with pytest.raises(CheckpointError, match=message) as error:
        convert_official_checkpoint(path, tmp_path / "out")
    assert str(path) in str(error.value) or case in ("other_model", "a_list")


def test_cli_reports_a_bad_file_in_one_line_without_traceback(tmp_path, capsys):
    path, _ = make_bad_files(tmp_path)["truncated"]
    status, out, err = run_cli(["convert", "official", str(path), str(tmp_path / "out")], capsys)
    assert status == 2 and out == ""
    assert err.startswith(f"faceptor: error: {path}") and err.count("\n") == 1 and "truncated or corrupt" in err


def farl_layout_state_dict(model: FaceptorModel, grid: int) -> dict[str, torch.Tensor]:
    """Our encoder written back in FaRL's CLIP layout (`visual.*`, packed attention, `proj` as width x dim),
    with a text tower beside it, as in FaRL-Base-Patch16-LAIONFace20M-ep64.pth."""
    mapper = KeyMapper(_encoder_templates("visual."))
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    visual = _pack_attention({mapper.to_source(key): value for key, value in encoder.items()})
    visual["visual.proj"] = visual["visual.proj"].t().contiguous()
    visual["visual.positional_embedding"] = resize_position_embedding(visual["visual.positional_embedding"], grid)
    text = {
        "token_embedding.weight": torch.randn(5, 8),
        "logit_scale": torch.tensor(4.6),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(24, 8),
    }
    return {**visual, **text}


def test_farl_checkpoint_becomes_the_encoder(tmp_path):
    source = FaceptorModel(tiny_config(position_grid_size=4)).eval()
    torch.save({"state_dict": farl_layout_state_dict(source, grid=4)}, tmp_path / "farl.pth")
    report = convert_farl(tmp_path / "farl.pth", tmp_path / "out", num_attention_heads=TINY["num_attention_heads"])
    assert set(report.dropped) == {
        "token_embedding.weight",
        "logit_scale",
        "transformer.resblocks.0.attn.in_proj_weight",
    }
    converted = FaceptorModel.from_pretrained(tmp_path / "out").eval()
    assert converted.config.position_grid_size == 32 and converted.config.task_names[0] == "recog_ms1mv3"
    converted_state = converted.state_dict()
    # The 4x4 grid is resized to 32x32 (bicubic, class position kept), as the official code does.
    expected_positions = resize_position_embedding(source.encoder.embeddings.position_embedding.detach(), 32)
    torch.testing.assert_close(converted_state["encoder.embeddings.position_embedding"], expected_positions)
    for key, value in source.state_dict().items():
        if key.startswith("encoder.") and "position_embedding" not in key:
            assert torch.equal(converted_state[key], value), key


def test_farl_in_transformers_clip_layout_matches_clip_vision_outputs(tmp_path):
    clip_config = CLIPConfig(
        text_config={
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 50,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
            "hidden_act": "quick_gelu",
        },
        projection_dim=8,
    )
    clip = CLIPModel(clip_config).eval()
    clip.save_pretrained(tmp_path / "clip")
    convert_farl(tmp_path / "clip", tmp_path / "out", num_attention_heads=2, position_grid_size=4)
    ours = FaceptorModel.from_pretrained(tmp_path / "out").eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # Both conventions: the embeddings' output, then every layer's.
        reference = clip.vision_model(pixel_values, output_hidden_states=True).hidden_states
        mine = ours(pixel_values, tasks="recog_ms1mv3", output_hidden_states=True).hidden_states
        clip_image_features = clip.get_image_features(pixel_values).pooler_output
        image_features = ours.get_image_features(pixel_values).pooler_output
        torch.testing.assert_close(image_features, clip_image_features, rtol=1e-5, atol=1e-5)
    for layer, (a, b) in enumerate(zip(mine, reference, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, layer=layer: f"layer {layer}: {m}")
