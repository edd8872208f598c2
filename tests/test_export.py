import pytest
import torch

from conftest import run_cli, tiny_config
from faceptor import FaceptorModel
from faceptor.commands.export import export_onnx

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("tasks", [["parsing_celebam", "align_300w"], ["age_morph2", "affect_rafdb", "recog_ms1mv3"]])
def test_onnx_graph_matches_pytorch_on_another_batch_size(tasks, tmp_path):
    model = FaceptorModel(tiny_config()).eval()
    differences = export_onnx(model, tmp_path / "model.onnx", tasks=tasks, input_size=32)
    assert set(differences) == set(tasks) and max(differences.values()) < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    assert [output.name for output in session.get_outputs()] == tasks
    batch = torch.randn(5, 3, 32, 32)
    results = session.run(None, {"pixel_values": batch.numpy()})
    with torch.no_grad():
        expected = model(batch, tasks=tasks).task_outputs
    for task, result in zip(tasks, results, strict=True):
        torch.testing.assert_close(torch.from_numpy(result), expected[task], rtol=1e-4, atol=1e-4)


def test_tasks_of_different_crop_sizes_are_refused(tmp_path):
    model = FaceptorModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="different sizes"):
        export_onnx(model, tmp_path / "model.onnx", tasks=["age_morph2", "align_300w"])


def test_cli_export(tmp_path, capsys):
    FaceptorModel(tiny_config()).save_pretrained(tmp_path / "model")
    arguments = [
        "export",
        "onnx",
        str(tmp_path / "model"),
        str(tmp_path / "age.onnx"),
        "--tasks",
        "age_morph2",
        "--size",
        "32",
    ]
    status, out, err = run_cli(arguments, capsys)
    assert status == 0, err
    assert "age_morph2: largest difference to PyTorch" in out and (tmp_path / "age.onnx").exists()
