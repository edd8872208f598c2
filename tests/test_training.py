import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModel

from conftest import ACCELERATE_TWO_CPU_PROCESSES
from faceptor import FaceptorModel
from faceptor.train.config import TrainingConfigError, load_training_config, parse_training_config
from faceptor.train.data.multitask import MultiTaskStepDataset, TaskStream
from faceptor.train.run import build_trainer, check_sample, main
from faceptor.train.synthetic import SyntheticTaskDataset

TINY_CONFIG = Path(__file__).parents[1] / "train" / "configs" / "tiny_synthetic.yaml"


def tiny_raw(**training) -> dict:
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    raw["training"].update({"logging_steps": 1, "save_steps": 1000, **training})
    return raw


def train(raw: dict, output_dir: Path):
    trainer = build_trainer(parse_training_config(copy.deepcopy(raw), "test"), str(output_dir))
    trainer.train()
    return trainer


def model_state(trainer) -> dict[str, torch.Tensor]:
    module = trainer.accelerator.unwrap_model(trainer.model)
    return {name: value.detach().clone() for name, value in module.model.state_dict().items()}


def changed_parameters(before: dict, after: dict) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def test_steps_mix_every_task_and_shard_over_ranks():
    spec = {"name": "a", "kind": "classification", "num_queries": 3, "input_size": 16}
    dataset = SyntheticTaskDataset(spec, num_samples=5)
    whole = MultiTaskStepDataset([TaskStream("a", dataset, 4)], seed=1)
    ranks = [MultiTaskStepDataset([TaskStream("a", dataset, 4)], seed=1, rank=r, world_size=2) for r in (0, 1)]
    for step in range(4):
        indices = whole.indices(0, step)
        assert len(indices) == 4
        assert sorted(ranks[0].indices(0, step) + ranks[1].indices(0, step)) == sorted(indices)
    # Every pass over the 5 samples is a permutation of all of them.
    stream = [index for step in range(5) for index in whole.indices(0, step)]
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:10]) == list(range(5))
    batch = next(iter(whole))["task_batches"]["a"]
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["labels"].shape == (4,)
    with pytest.raises(ValueError, match="does not split over 3"):
        MultiTaskStepDataset([TaskStream("a", dataset, 4)], world_size=3)


def test_a_few_dozen_steps_drive_the_loss_down(tmp_path):
    trainer = train(tiny_raw(max_steps=30), tmp_path)
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    first, last = history[0]["loss"], sum(entry["loss"] for entry in history[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert {key for key in history[-1] if key.startswith("loss/")} == {
        f"loss/{name}" for name in yaml.safe_load(TINY_CONFIG.read_text())["tasks"]
    }


def test_two_learning_rates_and_no_decay_on_queries(tmp_path):
    trainer = build_trainer(parse_training_config(tiny_raw(max_steps=1), "test"), str(tmp_path))
    optimizer = trainer.create_optimizer()
    module = trainer.model
    names = {id(p): name for name, p in module.named_parameters()}
    for group in optimizer.param_groups:
        group_names = [names[id(p)] for p in group["params"]]
        encoder = group_names[0].startswith("model.encoder.")
        assert all(name.startswith("model.encoder.") == encoder for name in group_names)
        assert group["lr"] == pytest.approx(1e-3 if encoder else 1e-2)
        if any("query_" in name for name in group_names):
            assert group["weight_decay"] == 0.0
    trained = {name for group in optimizer.param_groups for name in (names[id(p)] for p in group["params"])}
    assert "losses_module.losses.recog_ms1mv3.classifier" in trained
    assert not any(name.startswith("model.encoder.projection") for name in trained)


@pytest.fixture(scope="module")
def stage_one_model(tmp_path_factory) -> Path:
    """A stage-1 model, trained once for the tests that start from one (they only read it)."""
    folder = tmp_path_factory.mktemp("stage1")
    trainer = train(tiny_raw(max_steps=2), folder)
    trainer.save_model(str(folder))
    return folder


@pytest.mark.parametrize("mode", ["layer_attention", "layer_attention_official"])
def test_stage_two_trains_only_what_it_should(mode, stage_one_model, tmp_path):
    pretrained = stage_one_model
    raw = tiny_raw(max_steps=3)
    raw["model"] = {"pretrained": str(pretrained)}
    raw["stage"] = {"mode": mode, "open_layers": [1, 2]}
    trainer = build_trainer(parse_training_config(raw, "test"), str(tmp_path / "stage2"))
    before = model_state(trainer)
    assert before["decoder.level_embeddings"].shape[0] == 3  # layer 3 (top) + the opened 1 and 2
    trainer.train()
    after = model_state(trainer)
    changed = changed_parameters(before, after)
    if mode == "layer_attention":
        assert changed == {"decoder.level_embeddings"}
    else:
        queries = {name for name in before if name.startswith("decoder.query_")}
        assert changed == queries | {"decoder.level_embeddings"} | {
            f"decoder.input_projections.{level}.{part}" for level in (1, 2) for part in ("weight", "bias")
        }
        # The official stage 2 trains only the opened levels' rows; the stage-1 level's row stays.
        torch.testing.assert_close(
            after["decoder.level_embeddings"][0], before["decoder.level_embeddings"][0], rtol=0, atol=0
        )
    assert not torch.equal(after["decoder.level_embeddings"][1:], before["decoder.level_embeddings"][1:])


def test_prompt_tuning_changes_only_the_new_tasks_queries(stage_one_model, tmp_path):
    pretrained = stage_one_model
    raw = tiny_raw(max_steps=3)
    glasses = {"name": "glasses", "kind": "classification", "labels": ["none", "reading", "sun"], "input_size": 32}
    raw["model"] = {"pretrained": str(pretrained), "add_tasks": [glasses]}
    raw["stage"] = {"mode": "prompt", "prompt_tasks": ["glasses"]}
    raw["tasks"] = {"glasses": {"samples_per_step": 4, "weight": 1.0, "data": {"synthetic": {"num_samples": 4}}}}
    trainer = build_trainer(parse_training_config(raw, "test"), str(tmp_path / "prompt"))
    before = model_state(trainer)
    trainer.train()
    assert changed_parameters(before, model_state(trainer)) == {
        "decoder.query_features.glasses",
        "decoder.query_position_embeddings.glasses",
    }


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    raw = tiny_raw(max_steps=4, save_steps=2)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(config_path), "--output_dir", str(tmp_path / "straight")]) == 0
    # The same run interrupted after step 2: its folder, less what came later; then resume.
    import shutil

    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-4")
    (tmp_path / "resumed" / "model.safetensors").unlink()
    assert sorted(path.name for path in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-2"]
    assert main(["--config", str(config_path), "--output_dir", str(tmp_path / "resumed"), "--resume"]) == 0
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
    assert (tmp_path / "straight" / "task_losses.png").stat().st_size > 10_000
    assert sorted(os.listdir(tmp_path / "straight" / "task_query_sets"))[0] == "affect_rafdb.safetensors"
    assert type(AutoModel.from_pretrained(tmp_path / "straight")) is FaceptorModel
    metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert set(metrics) == {"age_morph2", "biattr_celeba", "affect_rafdb", "parsing_celebam", "align_300w"}
    assert set(metrics["age_morph2"]) >= {"mae", "cs_5"} and "f1_mean" in metrics["parsing_celebam"]


def test_config_errors_are_named_before_training(tmp_path):
    raw = tiny_raw()
    raw["tasks"]["age_imdb"] = raw["tasks"].pop("age_morph2")
    with pytest.raises(TrainingConfigError, match=r"no task \['age_imdb'\]"):
        build_trainer(parse_training_config(raw, "cfg"), str(tmp_path))
    raw = tiny_raw()
    raw["tasks"]["age_morph2"]["samples_per_step"] = 0
    with pytest.raises(TrainingConfigError, match="task 'age_morph2'.*samples_per_step"):
        parse_training_config(raw, "cfg")
    raw = tiny_raw()
    raw["tasks"]["age_morph2"]["data"] = {"reader": "age_morph2", "root": str(tmp_path / "MORPH2"), "split": "train"}
    with pytest.raises(TrainingConfigError, match="MORPH2: no such folder"):
        parse_training_config(raw, "cfg")
    with pytest.raises(TrainingConfigError, match="no such config file"):
        load_training_config(tmp_path / "missing.yaml")
    raw = tiny_raw()
    raw["model"] = {"pretrained": str(tmp_path / "nowhere")}
    with pytest.raises(TrainingConfigError, match="nowhere: no such folder"):
        parse_training_config(raw, "cfg")
    raw = tiny_raw()
    raw["tasks"]["recog_ms1mv3"]["samples_per_step"] = 1
    with pytest.raises(TrainingConfigError, match="BatchNorm needs at least 2 samples per process"):
        build_trainer(parse_training_config(raw, "cfg"), str(tmp_path))
    spec = {"name": "points", "kind": "landmarks", "num_queries": 5, "input_size": 32}
    bad = {"pixel_values": torch.zeros(3, 32, 32), "labels": torch.zeros(4, 2)}
    with pytest.raises(TrainingConfigError, match=r"labels of shape \(4, 2\), a landmarks task needs \(5, 2\)"):
        check_sample(spec, bad, None, "task 'points'")


@pytest.mark.slow
def test_two_processes_with_accelerate_agree_and_save_a_loadable_model(tmp_path):
    raw = tiny_raw(max_steps=4, save_steps=1000)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    command = [
        *ACCELERATE_TWO_CPU_PROCESSES,
        "-m",
        "faceptor.train",
        "--config",
        str(config_path),
        "--output_dir",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    checksums = json.loads((tmp_path / "run" / "replica_checksums.json").read_text())
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert type(AutoModel.from_pretrained(tmp_path / "run")) is FaceptorModel


TABLE_2 = {  # paper Table 2: (n_t, alpha_t) for Faceptor-Base and Faceptor-Full
    "base": {
        "align_300w": (4, 1000.0),
        "parsing_celebam": (4, 100.0),
        "age_morph2": (64, 6.0),
        "affect_affectnet": (64, 4.0),
        "affect_rafdb": (16, 1.0),
        "biattr_celeba": (64, 2.0),
        "recog_ms1mv3": (256, 5.0),
    },
    "full": {
        "align_300w": (4, 250.0),
        "align_wflw": (4, 250.0),
        "align_cofw": (4, 250.0),
        "align_aflw": (4, 250.0),
        "parsing_celebam": (4, 100.0),
        "parsing_lapa": (4, 100.0),
        "age_morph2": (64, 4.0),
        "age_utkface": (16, 1.0),
        "affect_affectnet": (64, 6.66),
        "affect_rafdb": (16, 1.67),
        "affect_ferplus": (16, 1.67),
        "biattr_celeba": (64, 2.0),
        "recog_ms1mv3": (256, 5.0),
    },
}


@pytest.mark.parametrize("variant", ["base", "full"])
def test_shipped_paper_configs_carry_table_2(variant):
    config = load_training_config(TINY_CONFIG.parent / f"faceptor_{variant}_stage1.yaml", check_paths=False)
    assert {task.name: (task.samples_per_step, task.weight) for task in config.tasks} == TABLE_2[variant]
    arguments = config.training_arguments
    assert (arguments["max_steps"], arguments["warmup_steps"], arguments["learning_rate"]) == (50000, 2000, 5e-5)
    assert (arguments["weight_decay"], arguments["lr_scheduler_type"], config.head_lr_multiplier) == (
        0.05,
        "cosine",
        10,
    )


def test_every_shipped_config_parses():
    for path in sorted(TINY_CONFIG.parent.glob("*.yaml")):
        config = load_training_config(path, check_paths=False)
        assert config.tasks, path
    stage_two = load_training_config(TINY_CONFIG.parent / "faceptor_base_stage2.yaml", check_paths=False)
    assert stage_two.mode == "layer_attention" and stage_two.open_layers == [1, 3, 5, 7, 9]


def test_training_reads_a_real_dataset_layout(tmp_path):
    """A UTKFace-layout folder (age in the file name) through the reader, the augmentation and two steps."""
    import numpy as np
    from PIL import Image

    (tmp_path / "utk" / "data").mkdir(parents=True)
    for index, age in enumerate([23, 35, 51, 67]):
        pixels = (np.random.default_rng(index).random((48, 48, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(tmp_path / "utk" / "data" / f"{age}_0_0_2017010{index}.jpg.chip.jpg")
    raw = tiny_raw(max_steps=2)
    data = {"reader": "age_utkface", "root": str(tmp_path / "utk"), "split": "all"}
    raw["tasks"] = {"age_morph2": {"samples_per_step": 2, "weight": 1.0, "data": data}}
    trainer = train(raw, tmp_path / "run")
    assert trainer.state.global_step == 2
    stream = trainer.task_streams[0].dataset
    assert len(stream) == 4 and stream[0]["pixel_values"].shape == (3, 32, 32)
    assert sorted(float(stream[i]["labels"]) for i in range(4)) == [23.0, 35.0, 51.0, 67.0]


def test_naive_faceptor_trains_from_the_same_config(tmp_path):
    raw = tiny_raw(max_steps=4)
    raw["model"]["architecture"] = "naive"
    # Its heads scaled down with the tiny encoder (the YAML sizes only Faceptor's): 512-wide UperNet heads would
    # make this the slowest test of the suite.
    raw["model"]["config"].update(dense_channels=8, attribute_hidden_size=16, attribute_reduction_ratio=4)
    del raw["tasks"]["biattr_celeba"]  # an untrained task: its head is frozen, not left without gradient
    trainer = build_trainer(parse_training_config(copy.deepcopy(raw), "test"), str(tmp_path))
    model = trainer.accelerator.unwrap_model(trainer.model).model
    assert type(model).__name__ == "NaiveFaceptorModel"
    before = model_state(trainer)
    trainer.train()
    changed = changed_parameters(before, model_state(trainer))
    assert any(name.startswith("heads.") for name in changed) and any(name.startswith("encoder.") for name in changed)
    assert not any(name.startswith("heads.biattr.") for name in changed)
    raw["stage"] = {"mode": "prompt", "prompt_tasks": ["age_morph2"]}
    with pytest.raises(TrainingConfigError, match="Naive Faceptor does not have"):
        build_trainer(parse_training_config(raw, "test"), str(tmp_path / "prompt"))
