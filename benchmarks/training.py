"""Training throughput of `faceptor train` on synthetic data: samples per second (all tasks, all processes)
for the tiny config and a ViT-B Faceptor-Base, in one process and in two (`accelerate launch`, gloo on CPU).

    python benchmarks/training.py [--steps 6] [--vit-b-steps 3] [--skip-vit-b]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

TINY = Path(__file__).parents[1] / "train" / "configs" / "tiny_synthetic.yaml"


def vit_b_config(samples_per_task: int) -> dict:
    """Faceptor-Base at full size with every task kind; n_t kept small so a CPU step takes seconds."""
    config = yaml.safe_load(TINY.read_text())
    config["model"] = {"preset": "faceptor-base"}
    for settings in config["tasks"].values():
        settings["samples_per_step"] = samples_per_task
        settings["data"] = {"synthetic": {"num_samples": 4}}
    return config


def run(config: dict, steps: int, processes: int, folder: Path) -> float:
    config = {
        **config,
        "training": {
            **config["training"],
            "max_steps": steps,
            "logging_steps": 1,
            "save_steps": 10**6,
            "warmup_steps": 0,
        },
    }
    path = folder / f"config_{processes}.yaml"
    path.write_text(yaml.safe_dump(config))
    output = folder / f"run_{processes}"
    arguments = ["-m", "faceptor.train", "--config", str(path), "--output_dir", str(output)]
    if processes == 1:
        command = [sys.executable, *arguments]
    else:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            *arguments,
        ]
    threads = max(1, (os.cpu_count() or 1) // processes)
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    history = json.loads((output / "log_history.json").read_text())
    runtime = next(entry["train_runtime"] for entry in history if "train_runtime" in entry)
    samples_per_step = sum(task["samples_per_step"] for task in config["tasks"].values())
    return samples_per_step * steps / runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--vit-b-steps", type=int, default=3)
    parser.add_argument("--skip-vit-b", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU, fp32")
    print("| model | samples per step | processes | samples/s |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        cases = [("tiny (tiny_synthetic.yaml)", yaml.safe_load(TINY.read_text()), args.steps)]
        if not args.skip_vit_b:
            cases.append(("ViT-B Faceptor-Base, 6 tasks", vit_b_config(4), args.vit_b_steps))
        for name, config, steps in cases:
            per_step = sum(task["samples_per_step"] for task in config["tasks"].values())
            for processes in (1, 2):
                rate = run(config, steps, processes, Path(folder))
                print(f"| {name} | {per_step} | {processes} | {rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
