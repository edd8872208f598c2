import argparse
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModel, pipeline

from conftest import naive_tiny_config
from faceptor import FaceptorImageProcessor
from faceptor.commands.compare_params import add_compare_params_command, compare_parameters
from faceptor.commands.convert import CheckpointError
from faceptor.commands.convert_naive import (
    add_convert_naive_command,
    convert_official_naive_checkpoint,
    to_official_naive_state_dict,
)
from faceptor.commands.errors import CommandError
from faceptor.configuration_naive_faceptor import NaiveFaceptorConfig
from faceptor.modeling_naive_faceptor import NaiveFaceptorModel
from faceptor.processing.geometry import heatmaps_to_points
from faceptor.task_presets import EXPRESSIONS
from faceptor.train.losses import FaceptorLoss
from faceptor.train.trainer import FaceptorTrainingModule

FIXTURES = Path(__file__).parent / "fixtures" / "official_naive"


# ------------------------------------------------------------------------------------------ official parity


@pytest.fixture(scope="module")
def golden():
    return load_file(FIXTURES / "golden_outputs.safetensors")


def assert_matches_official(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("variant", ["base", "full"])
def test_converted_checkpoint_reproduces_the_official_naive_outputs(variant, golden, tmp_path):
    report = convert_official_naive_checkpoint(
        FIXTURES / f"naive_faceptor_{variant}.pth.tar", tmp_path, keep_loss_weights=True, encoder_heads=2
    )
    model = AutoModel.from_pretrained(tmp_path).eval()
    assert type(model) is NaiveFaceptorModel
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is FaceptorImageProcessor
    config = model.config
    assert len(config.tasks) == (7 if variant == "base" else 13) and config.task_names[0] == "recog_ms1mv3"
    assert config.task_groups["affect"][:2] == ["affect_affectnet", "affect_rafdb"]
    assert config.task_specs["affect_rafdb"].labels == list(EXPRESSIONS)
    assert config.dense_feature_layers == [3, 5, 7, 11] and config.attribute_feature_layers == [5, 7, 9, 11]
    assert report.kept_aside == ["losses_module.losses.recog_ms1mv3.classifier"] and not report.dropped
    if variant == "full":  # a dense head shared by several tasks: their channels in the official order
        assert config.task_groups["align"] == ["align_300w", "align_cofw", "align_wflw", "align_aflw"]
        assert config.task_groups["parsing"] == ["parsing_celebam", "parsing_lapa"]
    with torch.no_grad():
        small = model(golden["inputs/pixels_112"], output_hidden_states=True)
        large = model(golden["inputs/pixels_128"], output_hidden_states=True)
    checked = set()
    for key, expected in golden.items():
        if key.startswith("encoder/") and variant == "base":
            _, size, layer = key.split("/")
            hidden = (small if size == "112" else large).hidden_states[int(layer.split("_")[1]) + 1]
            assert_matches_official(hidden[:, 1:].transpose(1, 2).reshape(expected.shape), expected, key)
        if not key.startswith(variant + "/"):
            continue
        _, task, what = key.split("/")
        output = (large if task.startswith(("parsing", "align")) else small).task_outputs[task]
        if what in ("logits", "maps", "embedding"):
            actual = output
        elif what == "maps_sub4":
            actual = output[:, :, 1::4, 1::4]
        elif what == "landmarks":
            actual = heatmaps_to_points(output.sigmoid())
        elif what == "parsing_upsampled_sub19":
            upsampled = F.interpolate(output, (512, 512), mode="bilinear", align_corners=False)
            actual = upsampled.permute(0, 2, 3, 1)[:, 5::19, 5::19]
        elif what == "cosine":
            classifier = load_file(tmp_path / "training_state.safetensors")[
                "losses_module.losses.recog_ms1mv3.classifier"
            ]
            actual = F.normalize(output, dim=1) @ F.normalize(classifier, dim=1).t()
        else:
            raise AssertionError(f"unexpected fixture key {key}")
        assert_matches_official(actual, expected, key)
        checked.add(task)
    assert checked == set(config.task_names)


def random_official_layout_config(rng: random.Random) -> NaiveFaceptorConfig:
    tasks = [
        {"name": "recog_ms1mv3", "kind": "embedding"},
        {"name": "age_custom", "kind": "age", "num_queries": rng.randint(2, 9)},
        {"name": "affect_rafdb", "kind": "classification", "labels": list(EXPRESSIONS)},
        {"name": "affect_mine", "kind": "classification", "num_queries": rng.randint(2, 5)},
        {"name": "parsing_lapa", "kind": "parsing", "num_queries": 11},
        {"name": "align_mine", "kind": "landmarks", "num_queries": rng.randint(1, 7)},
        {"name": "align_other", "kind": "landmarks", "num_queries": rng.randint(1, 7)},
    ]
    layers = rng.choice([4, 6])
    return NaiveFaceptorConfig(
        hidden_size=8 * rng.randint(1, 2),
        num_hidden_layers=layers,
        num_attention_heads=rng.choice([1, 2]),
        intermediate_size=rng.choice([16, 24]),
        position_grid_size=rng.choice([4, 6]),
        projection_dim=rng.choice([4, 12]),
        dense_feature_layers=[rng.randrange(layers) for _ in range(4)],
        dense_channels=rng.choice([4, 6]),
        attribute_feature_layers=[rng.randrange(layers) for _ in range(4)],
        attribute_hidden_size=rng.choice([8, 16]),
        attribute_kernel_size=rng.choice([1, 3]),
        attribute_reduction_ratio=rng.choice([2, 4]),
        identity_embedding_size=rng.choice([6, 10]),
        tasks=tasks,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_key_mapping_round_trip_on_random_shapes(seed, tmp_path):
    config = random_official_layout_config(random.Random(seed))
    assert config.task_groups["align"] == ["align_mine", "align_other"]
    original = NaiveFaceptorModel(config).eval()
    with torch.no_grad():
        for buffer in original.buffers():
            buffer.copy_(torch.randint_like(buffer, 1, 5) if buffer.dtype == torch.long else torch.rand_like(buffer))
    official = to_official_naive_state_dict(original.state_dict(), config)
    assert all(key.startswith(("backbone_module.visual.", "heads_module.heads.")) for key in official)
    assert "heads_module.heads.affect.fcs.affect_mine.weight" in official
    checkpoint = {"step": 1, "state_dict": {"module." + key: value for key, value in official.items()}}
    torch.save(checkpoint, tmp_path / "ckpt.pth.tar")
    # The dense 'align' group's channels are not stored per task: its tasks are given.
    align = [config.task_specs[name].to_dict() for name in ("align_mine", "align_other")]
    convert_official_naive_checkpoint(
        tmp_path / "ckpt.pth.tar",
        tmp_path / "out",
        encoder_heads=config.num_attention_heads,
        task_groups={"align": align},
        dense_feature_layers=config.dense_feature_layers,
        attribute_feature_layers=config.attribute_feature_layers,
    )
    converted = NaiveFaceptorModel.from_pretrained(tmp_path / "out")
    inferred, wanted = converted.config.to_dict(), config.to_dict()
    compared = (
        "hidden_size",
        "num_hidden_layers",
        "intermediate_size",
        "position_grid_size",
        "projection_dim",
        "dense_channels",
        "attribute_hidden_size",
        "attribute_kernel_size",
        "attribute_reduction_ratio",
        "identity_embedding_size",
        "dense_feature_layers",
        "attribute_feature_layers",
        "task_groups",
    )
    for name in compared:
        assert inferred[name] == wanted[name], name
    # Unofficial names keep the shapes' sizes and their prefix's kind; official ones get their labels back.
    assert [(s["name"], s["kind"], s["num_queries"]) for s in inferred["tasks"]] == [
        (s["name"], s["kind"], s["num_queries"]) for s in wanted["tasks"]
    ]
    converted_state = converted.state_dict()
    assert converted_state.keys() == original.state_dict().keys()
    for key, value in original.state_dict().items():
        assert torch.equal(converted_state[key], value), key


def test_checkpoints_the_converter_cannot_read_get_clear_errors(tmp_path):
    checkpoint = torch.load(FIXTURES / "naive_faceptor_base.pth.tar", weights_only=True)
    checkpoint["state_dict"]["module.heads_module.heads.age.mystery.weight"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "unknown.pth.tar")
    with pytest.raises(CheckpointError, match="does not know.*heads_module.heads.age.mystery.weight"):
        convert_official_naive_checkpoint(tmp_path / "unknown.pth.tar", tmp_path / "out", encoder_heads=2)
    assert not (tmp_path / "out").exists()
    checkpoint = torch.load(FIXTURES / "naive_faceptor_base.pth.tar", weights_only=True)
    state = checkpoint["state_dict"]
    for name in ("weight", "bias"):  # 68 + 3 channels: no set of official align tasks has 71
        key = f"module.heads_module.heads.align.head.conv_seg.{name}"
        state[key] = torch.cat([state[key], state[key][:3]])
    torch.save(checkpoint, tmp_path / "ambiguous.pth.tar")
    with pytest.raises(CheckpointError, match=r"'align' has 71 output channels.*task_groups"):
        convert_official_naive_checkpoint(tmp_path / "ambiguous.pth.tar", tmp_path / "out2", encoder_heads=2)
    faceptor_checkpoint = Path(__file__).parent / "fixtures" / "official" / "faceptor_stage1.pth.tar"
    with pytest.raises(CheckpointError, match="not a Naive Faceptor checkpoint"):
        convert_official_naive_checkpoint(faceptor_checkpoint, tmp_path / "out3")


# ------------------------------------------------------------------------------------------ the model


def test_naive_faceptor_counts_the_papers_178_9m_parameters():
    with torch.device("meta"):
        model = NaiveFaceptorModel(NaiveFaceptorConfig())
    counts = {name: sum(p.numel() for p in head.parameters()) for name, head in model.heads.items()}
    encoder = sum(p.numel() for p in model.encoder.parameters())
    total = sum(p.numel() for p in model.parameters())
    # The same numbers as the official modules built at full size (real mmseg UPerHead).
    assert total == 178_911_058 and round(total / 1e6, 1) == 178.9
    assert encoder == 86_828_544
    assert counts == {
        "recog": 987_136,
        "age": 4_150_405,
        "biattr": 4_119_112,
        "affect": 4_105_774,
        "parsing": 39_347_475,
        "align": 39_372_612,
    }
    assert round(counts["parsing"] / 1e6, 1) == round(counts["align"] / 1e6, 1) - 0.1 == 39.3
    assert round(counts["recog"] / 1e6, 1) == 1.0


def test_every_task_has_the_faceptor_output_shape():
    model = NaiveFaceptorModel(naive_tiny_config("faceptor-full")).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    expected = {
        "recog_ms1mv3": (3, 24),
        "age_morph2": (3, 101),
        "age_utkface": (3, 101),
        "biattr_celeba": (3, 40),
        "affect_affectnet": (3, 7),
        "affect_rafdb": (3, 7),
        "affect_ferplus": (3, 7),
        "parsing_celebam": (3, 19, 16, 16),
        "parsing_lapa": (3, 11, 16, 16),
        "align_300w": (3, 68, 16, 16),
        "align_cofw": (3, 29, 16, 16),
        "align_wflw": (3, 98, 16, 16),
        "align_aflw": (3, 19, 16, 16),
    }
    assert {name: tuple(value.shape) for name, value in out.task_outputs.items()} == expected
    assert all(torch.isfinite(value).all() for value in out.task_outputs.values())
    assert out.decoder_tokens is None and out.pixel_embeddings is None
    assert list(model.heads) == ["recog", "age", "biattr", "affect", "parsing", "align"]
    with torch.no_grad():  # a group's tasks alone equal the group run together; non-square inputs work
        alone = model(torch.randn(1, 3, 48, 80), tasks=["parsing_lapa", "affect_rafdb"]).task_outputs
        for name in ("age_utkface", "parsing_lapa", "align_wflw", "recog_ms1mv3"):
            single = model(torch.zeros(1, 3, 64, 64), tasks=name).task_outputs[name]
            together = model(torch.zeros(1, 3, 64, 64)).task_outputs[name]
            torch.testing.assert_close(single, together, rtol=1e-5, atol=1e-6)
    assert list(alone) == ["parsing_lapa", "affect_rafdb"] and alone["parsing_lapa"].shape == (1, 11, 12, 20)
    with pytest.raises(ValueError, match=r"no task \['age_imdb'\]"):
        model(torch.randn(1, 3, 32, 32), tasks=["age_imdb"])


def test_config_validates_task_groups():
    assert naive_tiny_config().task_groups["affect"] == ["affect_affectnet", "affect_rafdb"]
    with pytest.raises(ValueError, match="mixes the categories"):
        naive_tiny_config(task_groups={"all": naive_tiny_config().task_names})
    with pytest.raises(ValueError, match=r"in no task group"):
        naive_tiny_config(task_groups={"recog": ["recog_ms1mv3"]})
    with pytest.raises(ValueError, match="4 encoder layers"):
        naive_tiny_config(dense_feature_layers=[1, 2, 3])
    assert NaiveFaceptorConfig(num_hidden_layers=4, num_attention_heads=2, hidden_size=32).dense_feature_layers == [
        0,
        1,
        2,
        3,
    ]


def test_training_module_runs_each_task_on_its_own_rows():
    model = NaiveFaceptorModel(naive_tiny_config()).train()
    specs = {name: spec.to_dict() for name, spec in model.config.task_specs.items()}
    losses = FaceptorLoss(specs, dict.fromkeys(specs, 1.0), identity_classes={"recog_ms1mv3": 5}, embedding_size=24)
    module = FaceptorTrainingModule(model, losses)
    batches = {}
    for name, spec in specs.items():
        size = 64 if spec["category"] == "dense" else 32
        labels = {
            "embedding": torch.tensor([0, 3]),
            "age": torch.tensor([20.0, 50.0]),
            "classification": torch.tensor([1, 2]),
            "multilabel": torch.randint(0, 2, (2, 40)).float(),
            "parsing": torch.randint(0, 19, (2, size, size)),
            "landmarks": torch.rand(2, 68, 2) * size,
        }[spec["kind"]]
        batches[name] = {"pixel_values": torch.randn(2, 3, size, size), "labels": labels}
    result = module(batches)
    result["loss"].backward()
    assert set(result["task_losses"]) == set(specs) and torch.isfinite(result["loss"])
    assert model.task_state_dict("age_morph2") == {}  # no task query sets to save
    with torch.no_grad():
        model.eval()
        rows = {"age_morph2": slice(0, 2), "affect_rafdb": slice(2, 5), "align_300w": slice(1, 4)}
        pixel_values = torch.randn(5, 3, 32, 32)
        full = model(pixel_values, tasks=list(rows)).task_outputs
        split = model(pixel_values, tasks=list(rows), task_samples=rows).task_outputs
    for name, selected in rows.items():
        torch.testing.assert_close(split[name], full[name][selected], rtol=1e-5, atol=1e-6)


def test_heads_missing_from_a_checkpoint_get_the_official_initialisation(tmp_path):
    """A FaRL-initialised start: only the encoder is stored; `_init_weights` sets every head tensor."""
    config = naive_tiny_config(dense_channels=32)
    source = NaiveFaceptorModel(config).eval()
    config.save_pretrained(tmp_path)
    encoder = {key: value for key, value in source.state_dict().items() if key.startswith("encoder.")}
    save_file(encoder, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = NaiveFaceptorModel.from_pretrained(tmp_path, allow_missing_weights=True).eval()
    for key, value in encoder.items():
        assert torch.equal(model.state_dict()[key], value), key
    for name, module in model.heads.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert not module.bias.any() and not module.running_mean.any() and module.num_batches_tracked == 0
            assert torch.equal(module.running_var, torch.ones_like(module.running_var)), name
    conv = model.heads["parsing"].psp_bottleneck.conv.weight  # mmcv ConvModule: Kaiming normal, fan-out
    assert abs(conv.std().item() / (2 / (conv.shape[0] * 9)) ** 0.5 - 1) < 0.1
    classifier = model.heads["affect"].classifiers["affect_rafdb"]  # PyTorch's default Linear init
    assert classifier.bias.abs().max() <= 16**-0.5 and classifier.weight.abs().max() <= 16**-0.5
    with torch.no_grad():
        assert all(torch.isfinite(v).all() for v in model(torch.randn(2, 3, 32, 32)).task_outputs.values())


def test_the_face_perception_pipeline_serves_naive_faceptor_unchanged(tmp_path):
    NaiveFaceptorModel(naive_tiny_config()).eval().save_pretrained(tmp_path)
    FaceptorImageProcessor(dense_size=64, face_size=32).save_pretrained(tmp_path)
    face_pipeline = pipeline("face-perception", model=str(tmp_path), detector=None)
    image = (np.random.default_rng(0).random((96, 80, 3)) * 255).astype(np.uint8)
    result = face_pipeline(image, boxes=[[10, 10, 70, 80]])
    face = result["faces"][0]
    assert set(face) >= {"landmarks", "parsing", "age", "expression", "attributes", "embedding"}
    assert len(face["landmarks"]) == 68 and len(face["embedding"]) == 24 and len(face["attributes"]) == 40
    assert json.loads(json.dumps(result)) == result


# ------------------------------------------------------------------------------------------ storage table


def test_compare_parameters_prints_the_papers_storage_table():
    table = compare_parameters("faceptor-base")
    rows = [re.match(r"\s*(.*?)\s{2,}(\S+)\s+(\S+)$", line) for line in table.splitlines()]
    lines = {row[1]: [row[2], row[3]] for row in rows if row}
    assert lines["total"] == ["103.2M", "178.9M"]
    assert lines["encoder"] == ["86.8M", "86.8M"]
    assert lines["align_300w (landmarks, 68)"] == ["34.8K", "39.4M"]
    assert lines["+ landmarks, 68"] == ["34.8K", "39.4M"] and lines["+ embedding"] == ["0", "987.1K"]
    assert "(+73%)" in table
    per_task = compare_parameters(["age_morph2", "affect_rafdb"], one_head_per_task=True)
    assert "2 tasks" in per_task and "joining an existing dense head" not in per_task
    with pytest.raises(ValueError, match="Unknown task 'age_imdb'"):
        compare_parameters(["age_imdb"])


def test_compare_params_command(capsys):
    parser = argparse.ArgumentParser()
    add_compare_params_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare-params", "affect_rafdb", "--one-head-per-task"])
    args.handler(args)
    assert "affect_rafdb (classification, 7)" in capsys.readouterr().out


def test_convert_official_naive_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_convert_naive_command(parser.add_subparsers(dest="source"))
    checkpoint = str(FIXTURES / "naive_faceptor_base.pth.tar")
    args = parser.parse_args(
        [
            "official-naive",
            checkpoint,
            str(tmp_path / "out"),
            "--encoder-heads",
            "2",
            "--task-group",
            "align=align_300w",
        ]
    )
    args.handler(args)
    assert "head align: MMSEG_UPerHead (given): align_300w" in capsys.readouterr().out
    assert NaiveFaceptorConfig.from_pretrained(tmp_path / "out").task_groups["align"] == ["align_300w"]
    args = parser.parse_args(["official-naive", str(tmp_path / "missing.pth"), str(tmp_path / "out2")])
    with pytest.raises(CommandError, match="no such file"):
        args.handler(args)


def test_the_faceptor_converter_points_naive_checkpoints_to_their_converter(tmp_path):
    from faceptor.commands.convert import CheckpointError, convert_official_checkpoint

    with pytest.raises(CheckpointError, match="convert official-naive"):
        convert_official_checkpoint(FIXTURES / "naive_faceptor_base.pth.tar", tmp_path / "out")
