"""Inference speed of Faceptor-Base (ViT-B/16, random weights: speed does not depend on the values).

Reports (issue 23): the matmul peak measured in the same run; the encoder's time, TFLOP/s and % of that peak per
batch, eager and compiled (`max-autotune-no-cudagraphs` on CUDA); all seven tasks for one face (the dense group at
`--image-size`, the face group at `--face-size`): eager, a CUDA graph of the eager forward (CUDA only) and the
fixed-shape compiled forward `faceptor predict` uses (`faceptor.commands.compiled_inference`); a profiler table of
the 15 ops (kernels on CUDA) that take the most time in the encoder; the change of the outputs in the compute dtype
against float32.

    python benchmarks/inference.py --device cuda                        # 512 px, batches 1 and 32, bf16
    python benchmarks/inference.py --device cpu --image-size 224 --batches 1 4 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from faceptor import FaceptorConfig, FaceptorModel  # noqa: E402

DENSE_TASKS = ["parsing_celebam", "align_300w"]
FACE_TASKS = ["recog_ms1mv3", "age_morph2", "biattr_celeba", "affect_affectnet", "affect_rafdb"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best of `repeats` wall times after one warm-up call (seconds)."""
    function()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def first_call(function: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call (a compiling first call)."""
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    """Sustained TFLOP/s of matrix products, the best over square shapes and the encoder's own MLP product at
    512 px, so the peak is what this machine can do rather than one shape's luck."""
    best = 0.0
    for rows, inner, columns in ((2048, 2048, 2048), (8192, 8192, 8192), (1025, 768, 3072), (32800, 768, 3072)):
        if device.type == "cpu" and rows * inner * columns > 2**33:
            continue  # minutes per product on a CPU
        a = torch.randn(rows, inner, device=device, dtype=dtype)
        b = torch.randn(inner, columns, device=device, dtype=dtype)
        torch.matmul(a, b)
        synchronize(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or count < 2:
            torch.matmul(a, b)
            count += 1
        synchronize(device)
        best = max(best, 2 * rows * inner * columns * count / (time.perf_counter() - start) / 1e12)
    return best


def encoder_flops(config: FaceptorConfig, image_size: int) -> float:
    """Multiply-adds x 2 of one encoder forward: patch embedding plus, per layer, the QKV/output projections,
    attention scores and mix, and the MLP."""
    tokens = (image_size // config.patch_size) ** 2 + 1
    width, hidden = config.hidden_size, config.intermediate_size
    patches = 2 * (tokens - 1) * width * config.num_channels * config.patch_size**2
    per_layer = 2 * tokens * width * width * 4 + 2 * 2 * tokens * tokens * width + 2 * 2 * tokens * width * hidden
    return patches + config.num_hidden_layers * per_layer


def cuda_graph_forward(model: FaceptorModel, inputs: dict[int, torch.Tensor]) -> Callable[[], object]:
    """All tasks' forward captured in one CUDA graph on static inputs (fails if the forward copies host data)."""
    groups = {inputs[size].shape[-1]: tasks for size, tasks in ((0, DENSE_TASKS), (1, FACE_TASKS))}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up: fills the caches (position embeddings, packed weights) before capture
            [model(inputs[index], tasks=tasks) for index, tasks in enumerate(groups.values())]
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        [model(inputs[index], tasks=tasks) for index, tasks in enumerate(groups.values())]
    return graph.replay


def profile_table(function: Callable[[], object], device: torch.device, rows: int = 15) -> str:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    function()
    synchronize(device)
    with torch.profiler.profile(activities=activities) as profiler:
        function()
        synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="encoder batch sizes")
    parser.add_argument("--image-size", type=int, default=512, help="dense crops (landmarks, parsing)")
    parser.add_argument("--face-size", type=int, default=112, help="face crops (identity, age, attributes)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="per matmul shape")
    parser.add_argument("--skip-compile", action="store_true", help="eager only (no torch.compile)")
    parser.add_argument("--skip-drift", action="store_true", help="no comparison against float32")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    config = FaceptorConfig.from_preset("faceptor-base")
    model = FaceptorModel(config).eval().to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    print(f"machine: {name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}")
    peak = matmul_peak(dtype, device, args.peak_seconds)
    print(f"{args.dtype} matmul peak: {peak:.3g} TFLOP/s\n")

    if not args.skip_drift and dtype != torch.float32:
        inputs = {size: torch.randn(2, 3, size, size, device=device) for size in (args.image_size, args.face_size)}
        groups = ((args.image_size, DENSE_TASKS), (args.face_size, FACE_TASKS))
        with torch.inference_mode():
            reference = {
                task: value
                for size, tasks in groups
                for task, value in model(inputs[size], tasks=tasks).task_outputs.items()
            }
            low = model.to(dtype)
            changed = {
                task: value.float()
                for size, tasks in groups
                for task, value in low(inputs[size].to(dtype), tasks=tasks).task_outputs.items()
            }
        print(f"{args.dtype} against float32 (raw outputs, batch of 2): largest |difference| / largest |fp32 value|")
        for task, value in reference.items():
            print(f"  {task}: {(changed[task] - value).abs().max().item():.3g} / {value.abs().max().item():.3g}")
        print()
    model = model.to(dtype)

    flops = encoder_flops(config, args.image_size)
    pixels = {
        batch: torch.randn(batch, 3, args.image_size, args.image_size, device=device, dtype=dtype)
        for batch in args.batches
    }
    print(f"| encoder {args.image_size} px, {args.dtype} | batch | ms | TFLOP/s | % of peak | first call s |")
    print("| --- | --- | --- | --- | --- | --- |")
    with torch.inference_mode():
        encoders = {"eager": model.encoder}
        if not args.skip_compile:
            mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else None
            encoders[f"compiled ({mode or 'default'})"] = torch.compile(model.encoder, mode=mode, dynamic=False)
        for label, encoder in encoders.items():
            for batch in args.batches:
                warm = first_call(lambda e=encoder, b=batch: e(pixels[b]), device)
                seconds = timed(lambda e=encoder, b=batch: e(pixels[b]), device, args.repeats)
                achieved = flops * batch / seconds / 1e12
                print(
                    f"| {label} | {batch} | {seconds * 1000:.1f} | {achieved:.3g} | {achieved / peak:.0%} | "
                    f"{warm:.1f} |",
                    flush=True,
                )

    one = [torch.randn(1, 3, size, size, device=device, dtype=dtype) for size in (args.image_size, args.face_size)]
    print(
        f"\n| all 7 tasks, one face ({args.image_size} + {args.face_size} px), {args.dtype} | ms | faces/s | "
        "first call s |"
    )
    print("| --- | --- | --- | --- |")
    with torch.inference_mode():
        ways: dict[str, Callable[[], Callable[[], object]]] = {
            "eager": lambda: lambda: (model(one[0], tasks=DENSE_TASKS), model(one[1], tasks=FACE_TASKS))
        }
        if device.type == "cuda":
            ways["CUDA graph of the eager forward"] = lambda: cuda_graph_forward(model, {0: one[0], 1: one[1]})
        if not args.skip_compile:
            from faceptor.commands.compiled_inference import FixedShapeForward, default_compile_mode

            mode = default_compile_mode(device)

            def compiled_forward() -> Callable[[], object]:
                runner = FixedShapeForward(model.forward, 1, mode=mode)
                return lambda: (runner(one[0], tasks=DENSE_TASKS), runner(one[1], tasks=FACE_TASKS))

            ways[f"compiled, fixed shape ({mode or 'default'})"] = compiled_forward
        for label, make in ways.items():
            start = time.perf_counter()
            try:
                function = make()
                warm = first_call(function, device) + time.perf_counter() - start
                seconds = timed(function, device, args.repeats)
            except Exception as error:  # a benchmark row, not a crash: e.g. a capture that fails
                print(f"| {label} | failed: {type(error).__name__}: {str(error).splitlines()[0][:120]} | | |")
                continue
            print(f"| {label} | {seconds * 1000:.1f} | {1 / seconds:.1f} | {warm:.1f} |", flush=True)

        batch = max(args.batches)
        print(f"\nprofile: eager encoder, batch {batch}, {args.image_size} px, {args.dtype}, top 15 by self time")
        print(profile_table(lambda: model.encoder(pixels[batch]), device))


if __name__ == "__main__":
    main()
