"""Faults and bad input in training and the demo model's install (issue 19): every case stops with exit status 2
(1 when training diverges) and one line on standard error, no traceback, and leaves what was there before as it
was; checkpoints are complete or absent."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from faceptor.train.checkpoints import RUN_RECORD_FILE, missing_parts
from faceptor.train.config import load_training_config, parse_training_config, training_fingerprint
from faceptor.train.run import build_trainer, main
from faceptor.train.trainer import FaceptorTrainer, TrainingDivergedError

TINY_CONFIG = Path(__file__).parents[1] / "train" / "configs" / "tiny_synthetic.yaml"
ERROR = "faceptor train: error: "


def small_raw(**training) -> dict:
    """The tiny config with two small tasks, a checkpoint every step and 2 steps: a run of a few seconds."""
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    raw["tasks"] = {name: raw["tasks"][name] for name in ("age_morph2", "affect_rafdb")}
    raw["training"].update({"max_steps": 2, "save_steps": 1, "logging_steps": 1, "warmup_steps": 0, **training})
    return raw


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the SHA-256 of its bytes."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_train(arguments: list[str], capsys) -> tuple[int, str]:
    """`faceptor train ARGUMENTS` in this process: its exit status and standard error."""
    capsys.readouterr()
    status = main(arguments)
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, err: str, expected_status: int, pattern: str) -> None:
    assert status == expected_status, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith(ERROR)]
    assert len(errors) == 1, err[-2000:]
    assert re.search(pattern, errors[0]), errors[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished 2-step run (checkpoint-1, checkpoint-2, the final model) and its config, trained once; the tests
    copy it."""
    work = tmp_path_factory.mktemp("finished")
    config = work / "small.yaml"
    config.write_text(yaml.safe_dump(small_raw()))
    assert main(["--config", str(config), "--output_dir", str(work / "run")]) == 0
    return config, work / "run"


def with_config(raw_change: Callable[[dict, Path], None]) -> Callable[[Path, Path], list[str]]:
    """A row's setup: the small config changed by `raw_change(raw, work)`, trained into a fresh output folder."""

    def setup(work: Path, run: Path) -> list[str]:
        raw = small_raw()
        raw_change(raw, work)
        config = work / "changed.yaml"
        config.write_text(yaml.safe_dump(raw))
        return ["--config", str(config), "--output_dir", str(work / "fresh")]

    return setup


def set_in(*path_and_value) -> Callable[[dict, Path], None]:
    """A change to the raw config: the value at the key path (creating mappings on the way)."""
    *path, key, value = path_and_value

    def change(raw: dict, work: Path) -> None:
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value

    return change


def on_finished_run(extra: list[str], damage: Callable[[Path], None] = lambda run: None, raw_change=None):
    """A row's setup: a copy of the finished run, damaged by `damage`, trained into again with `extra` arguments
    (and the config changed by `raw_change`)."""

    def setup(work: Path, run: Path) -> list[str]:
        damage(run)
        config = work / "again.yaml"
        raw = small_raw()
        if raw_change is not None:
            raw_change(raw, work)
        config.write_text(yaml.safe_dump(raw))
        return ["--config", str(config), "--output_dir", str(run), *extra]

    return setup


def remove(*names: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        for name in names:
            path = run / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    return damage


class _RunsCode:
    """A pickle that runs a command when unpickled (what `weights_only=True` must refuse)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_optimizer(run: Path) -> None:
    torch.save(_RunsCode(run.parent / "pwned"), run / "checkpoint-2" / "optimizer.pt")


def make_file(work: Path, run: Path) -> list[str]:
    (work / "a_file").write_text("not a folder\n")
    config = work / "small.yaml"
    config.write_text(yaml.safe_dump(small_raw()))
    return ["--config", str(config), "--output_dir", str(work / "a_file")]


def empty_data_folder(raw: dict, work: Path) -> None:
    (work / "empty").mkdir()
    raw["tasks"]["age_morph2"]["data"] = {"reader": "age_utkface", "root": str(work / "empty"), "split": "all"}


def utkface_folder(work: Path, names: dict[str, bytes | None]) -> dict:
    """A UTKFace folder of the face photo under each name (or the given bytes), as a task's data."""
    from PIL import Image
    from skimage import data

    folder = work / "utk" / "data"
    folder.mkdir(parents=True)
    for name, content in names.items():
        if content is None:
            Image.fromarray(data.astronaut()[30:150, 165:260]).save(folder / name)
        else:
            (folder / name).write_bytes(content)
    return {"reader": "age_utkface", "root": str(work / "utk"), "split": "all"}


def an_age_of_500(raw: dict, work: Path) -> None:
    raw["tasks"]["age_morph2"]["data"] = utkface_folder(work, {"25_0_0_a.jpg": None, "500_0_0_b.jpg": None})


def corrupt_images_past_the_first(raw: dict, work: Path) -> None:
    names = {"20_0_0_a.jpg": None, **{f"{21 + index}_0_0_b{index}.jpg": b"\xff\xd8 not a jpeg" for index in range(3)}}
    raw["tasks"]["age_morph2"]["data"] = utkface_folder(work, names)


def unknown_reader(raw: dict, work: Path) -> None:
    raw["tasks"]["age_morph2"]["data"] = {"reader": "age_imdb", "root": str(work), "split": "all"}


CASES = {  # name: (setup, expected exit status, pattern of the one error line)
    "learning_rate_not_a_number": (
        with_config(set_in("training", "learning_rate", "fast")),
        2,
        r"training\.learning_rate must be a number > 0",
    ),
    "learning_rate_negative": (
        with_config(set_in("training", "learning_rate", -1.0)),
        2,
        r"training\.learning_rate must be a number > 0",
    ),
    "samples_per_step_bool": (
        with_config(set_in("tasks", "age_morph2", "samples_per_step", True)),
        2,
        r"samples_per_step .*integer >= 1",
    ),
    "max_steps_zero": (with_config(set_in("training", "max_steps", 0)), 2, r"training\.max_steps must be an integer"),
    "gradient_accumulation_zero": (
        with_config(set_in("training", "gradient_accumulation_steps", 0)),
        2,
        r"gradient_accumulation_steps .*>= 1",
    ),
    "logging_steps_zero": (with_config(set_in("training", "logging_steps", 0)), 2, r"training\.logging_steps .*>= 1"),
    "seed_not_a_number": (with_config(set_in("training", "seed", "abc")), 2, r"training\.seed must be an integer in"),
    "weight_infinite": (
        with_config(set_in("tasks", "age_morph2", "weight", float("inf"))),
        2,
        r"weight \(alpha_t\) must be a number",
    ),
    "open_layer_out_of_range": (
        with_config(set_in("stage", "open_layers", [99])),
        2,
        r"stage\.open_layers: .*99.*0\.\.3",
    ),
    "misspelt_model_config_key": (
        with_config(set_in("model", "config", "decoder_layer", 3)),
        2,
        r"model\.config has unknown keys \['decoder_lay",
    ),
    "unknown_prompt_task": (
        with_config(lambda raw, work: raw.update(stage={"mode": "prompt", "prompt_tasks": ["glasses"]})),
        2,
        r"stage\.prompt_tasks \['glasses'\] are not trained",
    ),
    "unknown_training_key": (
        with_config(set_in("training", "learning_rat", 0.1)),
        2,
        r"unknown training settings \['learning_rat'\]",
    ),
    "empty_data_folder": (with_config(empty_data_folder), 2, r"task 'age_morph2': .*missing UTKFace image folder"),
    "unknown_reader": (with_config(unknown_reader), 2, r"task 'age_morph2': unknown reader 'age_imdb'"),
    "age_outside_the_head": (
        with_config(an_age_of_500),
        2,
        r"task 'age_morph2': .*utk: 500_0_0_b\.jpg: age 500 outside 0\.\.100, the range",
    ),
    "corrupt_image_past_the_first": (
        with_config(corrupt_images_past_the_first),
        2,
        r"utk/data/2[123]_0_0_b\d\.jpg: sample [123]: cannot read its image",
    ),
    "absurd_model_size": (
        with_config(set_in("model", "config", "intermediate_size", 10**12)),
        2,
        r"model: model\.config: the config asks for a model of [\d,]+ parameters \(over 10,000,000,000\): sizes "
        r"\{'intermediate_size': 1000000000000",
    ),
    "output_dir_is_a_file": (make_file, 2, r"a_file is a file, not a folder"),
    "new_run_over_an_earlier_one": (on_finished_run([]), 2, r"holds an earlier run \(checkpoint-1, checkpoint-2,"),
    "resume_under_another_config": (
        on_finished_run(["--resume"], raw_change=set_in("training", "learning_rate", 0.5)),
        2,
        r"checkpoint-2 was written by a different training config",
    ),
    "resume_without_a_complete_checkpoint": (
        on_finished_run(["--resume"], remove("checkpoint-1/model.safetensors", "checkpoint-2/trainer_state.json")),
        2,
        r"no complete checkpoint to resume from \(incomplete: checkpoint-2 \(no trainer_state\.json\), "
        r"checkpoint-1 \(no model\.safetensors\)\)",
    ),
    "resume_with_a_hostile_optimizer_file": (
        on_finished_run(["--resume"], hostile_optimizer),
        2,
        r"checkpoint-2: its optimizer state cannot be loaded: .*pickled objects other than tensors",
    ),
    "loss_not_finite": (
        with_config(set_in("tasks", "age_morph2", "weight", 1.0e38)),
        1,
        r"the loss is not finite at step 1",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fault_stops_with_one_line_and_changes_nothing(case, finished_run, tmp_path, capsys, monkeypatch):
    setup, expected_status, pattern = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(finished_run[1], run)
    monkeypatch.chdir(tmp_path)
    arguments = setup(tmp_path, run)
    before = {path.name: snapshot(path) for path in tmp_path.iterdir()}
    status, err = run_train(arguments, capsys)
    assert_one_line_error(status, err, expected_status, pattern)
    after = {path.name: snapshot(path) for path in tmp_path.iterdir()}
    # Nothing lost or changed, and nothing written but empty folders.
    assert {name: files for name, files in after.items() if files or name in before} == before
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_resume_takes_the_newest_complete_checkpoint_and_says_which(finished_run, tmp_path, capsys):
    config, finished = finished_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "checkpoint-2" / "model.safetensors").unlink()  # killed while saving, by an older version
    (run / "model.safetensors").unlink()
    kept = snapshot(run / "checkpoint-1")
    status, err = run_train(["--config", str(config), "--output_dir", str(run), "--resume"], capsys)
    assert status == 0, err[-2000:]
    said = [line for line in err.splitlines() if line.startswith("faceptor train: resuming")]
    skipped = "checkpoint-2 (no model.safetensors)"
    assert said == [f"faceptor train: resuming from {run / 'checkpoint-1'} (skipping incomplete {skipped})"]
    assert not missing_parts(str(run / "checkpoint-2")) and snapshot(run / "checkpoint-1") == kept
    resumed, straight = load_file(run / "model.safetensors"), load_file(finished / "model.safetensors")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)


class _Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


@pytest.mark.slow
def test_a_save_killed_midway_leaves_no_checkpoint_and_resume_goes_on(tmp_path, monkeypatch, capsys):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small_raw()))
    save_rng_state = FaceptorTrainer._save_rng_state

    def killed_at_step_two(self, output_dir):
        if self.state.global_step == 2:
            raise _Killed
        save_rng_state(self, output_dir)

    monkeypatch.setattr(FaceptorTrainer, "_save_rng_state", killed_at_step_two)
    run = tmp_path / "run"
    with pytest.raises(_Killed):
        main(["--config", str(config), "--output_dir", str(run)])
    assert sorted(path.name for path in run.iterdir() if "checkpoint" in path.name) == [
        "checkpoint-1",
        "tmp-checkpoint-2",
    ]
    assert (run / "tmp-checkpoint-2" / "checkpoint-2" / "model.safetensors").is_file()  # half written, aside
    monkeypatch.undo()
    status, err = run_train(["--config", str(config), "--output_dir", str(run)], capsys)
    assert_one_line_error(status, err, 2, r"holds an earlier run \(checkpoint-1, tmp-checkpoint-2\)")
    status, err = run_train(["--config", str(config), "--output_dir", str(run), "--resume"], capsys)
    assert status == 0 and f"resuming from {run / 'checkpoint-1'}\n" in err, err[-2000:]
    assert sorted(path.name for path in run.iterdir() if "checkpoint" in path.name) == ["checkpoint-1", "checkpoint-2"]
    assert not missing_parts(str(run / "checkpoint-2"))


@pytest.mark.slow
def test_overwrite_output_dir_replaces_the_earlier_run(finished_run, tmp_path, capsys):
    config, finished = finished_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "checkpoint-7").mkdir()  # a checkpoint this run would never write over
    raw = small_raw(learning_rate=2e-3)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    status, err = run_train(["--config", str(other), "--output_dir", str(run), "--overwrite_output_dir"], capsys)
    assert status == 0, err[-2000:]
    assert sorted(path.name for path in run.iterdir() if "checkpoint" in path.name) == ["checkpoint-1", "checkpoint-2"]
    record = json.loads((run / "checkpoint-2" / RUN_RECORD_FILE).read_text())
    assert record["config_sha256"] == training_fingerprint(load_training_config(other))
    assert (
        record["config_sha256"]
        != json.loads((finished / "checkpoint-2" / RUN_RECORD_FILE).read_text())["config_sha256"]
    )


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_partial_save(tmp_path, monkeypatch, capsys):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small_raw()))
    save_rng_state = FaceptorTrainer._save_rng_state

    def disk_full_at_step_two(self, output_dir):
        if self.state.global_step == 2:
            raise OSError(28, "No space left on device")
        save_rng_state(self, output_dir)

    monkeypatch.setattr(FaceptorTrainer, "_save_rng_state", disk_full_at_step_two)
    run = tmp_path / "run"
    status, err = run_train(["--config", str(config), "--output_dir", str(run)], capsys)
    full = r"run: the disk is full while saving \(No space left on device\); the checkpoints saved before are whole"
    assert_one_line_error(status, err, 2, full)
    assert sorted(path.name for path in run.iterdir() if "checkpoint" in path.name) == ["checkpoint-1"]
    assert not missing_parts(str(run / "checkpoint-1"))


def test_sigterm_stops_training_with_one_line_and_143(tmp_path, monkeypatch, capsys):
    import signal

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small_raw()))
    save_rng_state = FaceptorTrainer._save_rng_state

    def terminated_at_step_two(self, output_dir):
        if self.state.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        save_rng_state(self, output_dir)

    monkeypatch.setattr(FaceptorTrainer, "_save_rng_state", terminated_at_step_two)
    status, err = run_train(["--config", str(config), "--output_dir", str(tmp_path / "run")], capsys)
    assert status == 143 and "Traceback" not in err, err[-2000:]
    assert (
        err.splitlines().count("faceptor train: terminated (SIGTERM); finished outputs kept, partial ones removed") == 1
    )


def test_numbers_written_as_yaml_strings_are_numbers(tmp_path):
    text = TINY_CONFIG.read_text().replace("learning_rate: 1.0e-3", "learning_rate: 1e-3")
    (tmp_path / "strings.yaml").write_text(text.replace("max_steps: 40", 'max_steps: "40"'))
    assert yaml.safe_load(text)["training"]["learning_rate"] == "1e-3"  # what PyYAML makes of it
    config = load_training_config(tmp_path / "strings.yaml")
    assert config.training["learning_rate"] == 1e-3 and config.training["max_steps"] == 40
    # Settings that only say what is logged or kept do not change the fingerprint; learning ones do.
    fingerprint = training_fingerprint(config)
    config.training["logging_steps"] = 3
    assert training_fingerprint(config) == fingerprint
    config.training["learning_rate"] = 2e-3
    assert training_fingerprint(config) != fingerprint


def test_install_failing_midway_leaves_the_demo_model_whole(tmp_path, monkeypatch, capsys):
    import faceptor.demo_model
    from recipes.demo_model import cli

    target, model = tmp_path / "package" / "demo_model", tmp_path / "work" / "model"
    for folder, content in ((target, "old"), (model, "new")):
        folder.mkdir(parents=True)
        for name in cli.DEMO_MODEL_FILES:
            (folder / name).write_text(f"{content} {name}\n")
    (target / "__init__.py").write_text("DEMO = 1\n")
    monkeypatch.setattr(faceptor.demo_model, "DEMO_MODEL_DIR", target)
    before = snapshot(target)
    copy2 = shutil.copy2

    def disk_full_at_the_third_file(source, destination, *args, **kwargs):
        if Path(source).name == cli.DEMO_MODEL_FILES[2]:
            raise OSError(28, "No space left on device")
        return copy2(source, destination, *args, **kwargs)

    monkeypatch.setattr(cli.shutil, "copy2", disk_full_at_the_third_file)
    capsys.readouterr()
    assert cli.main(["install", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    assert snapshot(target) == before
    assert sorted(path.name for path in target.parent.iterdir()) == ["demo_model"]  # no half-built sibling
    monkeypatch.setattr(cli.shutil, "copy2", copy2)
    assert cli.main(["install", str(tmp_path / "work")]) == 0
    assert (target / "__init__.py").read_text() == "DEMO = 1\n"
    assert all((target / name).read_text() == f"new {name}\n" for name in cli.DEMO_MODEL_FILES)
    assert sorted(path.name for path in target.parent.iterdir()) == ["demo_model"]


def test_a_gradient_that_is_not_finite_stops_training_before_the_weights_change(tmp_path):
    trainer = build_trainer(parse_training_config(small_raw(max_steps=2), "small"), str(tmp_path / "run"))
    model = trainer.accelerator.unwrap_model(trainer.model).model
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    # A real non-finite gradient beside a finite loss: one parameter's gradient is made infinite on its way back.
    model.decoder.query_features["affect_rafdb"].register_hook(lambda gradient: gradient * float("inf"))
    with pytest.raises(TrainingDivergedError, match=r"the gradient norm is not finite \(inf\) at step 1"):
        trainer.train()
    after = model.state_dict()
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert not any(path.name.startswith(("checkpoint", "tmp-checkpoint")) for path in (tmp_path / "run").glob("*"))
