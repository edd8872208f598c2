"""Data of one's own plugs into training by name: `register_task_dataset` and `build_task_dataset`."""

import pytest
import torch
from torch.utils.data import TensorDataset

from faceptor.train.data import DatasetFormatError
from faceptor.train.data.task_dataset import TASK_DATASET_BUILDERS, build_task_dataset, register_task_dataset


@pytest.fixture
def my_reader():
    calls = []

    def build(spec, root, split, train):
        calls.append((spec["name"], root, split, train))
        return TensorDataset(torch.zeros(3, 3, spec["input_size"], spec["input_size"]))

    yield "my_faces_for_a_test", build, calls
    TASK_DATASET_BUILDERS.pop("my_faces_for_a_test", None)


def test_a_registered_builder_serves_its_reader_name(my_reader):
    name, build, calls = my_reader
    register_task_dataset(name, build)
    register_task_dataset(name, build)  # the same builder again: nothing changes
    spec = {"name": "age_mine", "kind": "age", "input_size": 16}
    dataset = build_task_dataset(spec, name, "/data/mine", "val", train=False)
    assert len(dataset) == 3 and dataset[0][0].shape == (3, 16, 16)
    assert calls == [("age_mine", "/data/mine", "val", False)]


def test_a_taken_name_is_refused_and_an_unknown_one_names_the_registry(my_reader):
    name, build, _ = my_reader
    with pytest.raises(ValueError, match="already has a task-dataset builder"):
        register_task_dataset("align_300w", build)  # a public reader keeps its own builder
    with pytest.raises(DatasetFormatError, match="register_task_dataset"):
        build_task_dataset({"name": "x", "kind": "age", "input_size": 16}, name, "/data", "train")
