"""Inference speed of Faceptor-Base (ViT-B/16, random weights: speed does not depend on the values).

For batches of 1, 8 and 32 faces: faces per second for the 512-px group (landmarks, parsing), the 112-px group
(age, attributes, two expressions, identity) and all seven tasks; the same with one task per call (the per-task
loop of the official evaluation, which re-runs the encoder for every task); the encoder alone; the encoder's
FLOP/s against a matmul peak measured in the same run; peak memory; bf16 against fp32 (speed and the change in
outputs); optionally `torch.compile`.

    python benchmarks/inference.py [--batches 1 8 32] [--repeats 3] [--compile] [--device cpu|cuda]
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

GROUPS = {
    512: ["parsing_celebam", "align_300w"],
    112: ["recog_ms1mv3", "age_morph2", "biattr_celeba", "affect_affectnet", "affect_rafdb"],
}


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


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 1.5) -> float:
    """Sustained GFLOP/s of matrix products, the best over a few shapes (square ones and the encoder's own
    MLP product at 512 px), so the peak is what this machine can do rather than one shape's luck."""
    best = 0.0
    for rows, inner, columns in ((2048, 2048, 2048), (4096, 4096, 4096), (1025, 768, 3072), (8200, 768, 3072)):
        a = torch.randn(rows, inner, device=device, dtype=dtype)
        b = torch.randn(inner, columns, device=device, dtype=dtype)
        torch.matmul(a, b)
        synchronize(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.matmul(a, b)
            count += 1
        synchronize(device)
        best = max(best, 2 * rows * inner * columns * count / (time.perf_counter() - start) / 1e9)
    return best


def encoder_flops(config: FaceptorConfig, image_size: int) -> float:
    """Multiply-adds x 2 of one encoder forward: patch embedding plus, per layer, the QKV/output
    projections, attention scores and mix, and the MLP."""
    tokens = (image_size // config.patch_size) ** 2 + 1
    width, hidden = config.hidden_size, config.intermediate_size
    patches = 2 * (tokens - 1) * width * config.num_channels * config.patch_size**2
    per_layer = 2 * tokens * width * width * 4 + 2 * 2 * tokens * tokens * width + 2 * 2 * tokens * width * hidden
    return patches + config.num_hidden_layers * per_layer


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the process's peak resident set size (VmHWM)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the model")
    parser.add_argument("--skip-bf16", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = FaceptorConfig.from_preset("faceptor-base")
    model = FaceptorModel(config).eval().to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    print(f"machine: {name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}")
    peaks = {dtype: matmul_peak(dtype, device) for dtype in (torch.float32, torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks[torch.float32]:.0f} GFLOP/s, bf16 {peaks[torch.bfloat16]:.0f} GFLOP/s\n")

    def run_groups(batch: int, dtype: torch.dtype, subject: FaceptorModel) -> dict[str, float]:
        inputs = {size: torch.randn(batch, 3, size, size, device=device, dtype=dtype) for size in GROUPS}
        times = {}
        with torch.inference_mode():
            for size, tasks in GROUPS.items():
                times[f"encoder {size}"] = timed(lambda s=size: subject.encoder(inputs[s]), device, args.repeats)
                times[f"tasks {size}"] = timed(
                    lambda s=size, t=tasks: subject(inputs[s], tasks=t), device, args.repeats
                )
                times[f"per-task loop {size}"] = timed(
                    lambda s=size, t=tasks: [subject(inputs[s], tasks=task) for task in t], device, args.repeats
                )
        times["all tasks"] = times["tasks 512"] + times["tasks 112"]
        times["per-task loop"] = times["per-task loop 512"] + times["per-task loop 112"]
        times["two encoder passes"] = times["encoder 512"] + times["encoder 112"]
        return times

    print("| batch | dtype | 512 group faces/s | 112 group faces/s | all 7 tasks faces/s | per-task loop faces/s "
          "| all tasks / two encoder passes | encoder 512 GFLOP/s (% of peak) | peak memory MiB |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    dtypes = [torch.float32] if args.skip_bf16 else [torch.float32, torch.bfloat16]
    for dtype in dtypes:
        subject = model.to(dtype)
        for batch in args.batches:
            peak_memory_reset(device)
            times = run_groups(batch, dtype, subject)
            achieved = encoder_flops(config, 512) * batch / times["encoder 512"] / 1e9
            print(
                f"| {batch} | {str(dtype).removeprefix('torch.')} | {batch / times['tasks 512']:.2f} | "
                f"{batch / times['tasks 112']:.2f} | {batch / times['all tasks']:.2f} | "
                f"{batch / times['per-task loop']:.2f} | {times['all tasks'] / times['two encoder passes']:.2f} | "
                f"{achieved:.0f} ({achieved / peaks[dtype]:.0%}) | {peak_memory_mib(device):.0f} |",
                flush=True,
            )
    model = model.to(torch.float32)

    if not args.skip_bf16:
        inputs = {size: torch.randn(2, 3, size, size, device=device) for size in GROUPS}
        with torch.inference_mode():
            reference = {**model(inputs[512], tasks=GROUPS[512]).task_outputs,
                         **model(inputs[112], tasks=GROUPS[112]).task_outputs}  # fmt: skip
            low = model.to(torch.bfloat16)
            changed = {**low(inputs[512].bfloat16(), tasks=GROUPS[512]).task_outputs,
                       **low(inputs[112].bfloat16(), tasks=GROUPS[112]).task_outputs}  # fmt: skip
        model = model.to(torch.float32)
        print("\nbf16 against fp32 (raw outputs, batch of 2): largest absolute difference / largest |fp32 value|")
        for task, value in reference.items():
            difference = (changed[task].float() - value).abs().max().item()
            print(f"  {task}: {difference:.3g} / {value.abs().max().item():.3g}")

    if args.compile:
        # The encoder compiled in place (as `faceptor predict --compile`), timed against the same peak.
        eager_times = {}
        with torch.inference_mode():
            for batch in args.batches:
                pixel_values = torch.randn(batch, 3, 512, 512, device=device)
                eager_times[batch] = timed(lambda p=pixel_values: model.encoder(p), device, args.repeats)
            model.encoder.compile()
            print("\ntorch.compile (inductor) of the encoder, fp32, 512 px:")
            for batch in args.batches:
                pixel_values = torch.randn(batch, 3, 512, 512, device=device)
                start = time.perf_counter()
                model.encoder(pixel_values)
                warm = time.perf_counter() - start
                fast = timed(lambda p=pixel_values: model.encoder(p), device, args.repeats)
                achieved = encoder_flops(config, 512) * batch / fast / 1e9
                print(f"  batch {batch}: eager {eager_times[batch] * 1000:.0f} ms, compiled {fast * 1000:.0f} ms, "
                      f"{achieved:.0f} GFLOP/s ({achieved / peaks[torch.float32]:.0%} of the fp32 peak); "
                      f"first call {warm:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
