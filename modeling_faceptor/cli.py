"""The `faceptor` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def load_config(name_or_path: str):
    from .configuration_faceptor import FaceptorConfig
    from .task_presets import PRESETS

    if name_or_path in PRESETS:
        return FaceptorConfig.from_preset(name_or_path)
    if os.path.isdir(name_or_path):
        try:
            return FaceptorConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as error:
            raise CommandError(f"{name_or_path}: not a Faceptor model folder ({error})") from None
    raise CommandError(f"{name_or_path}: neither a preset ({', '.join(PRESETS)}) nor a model folder")


def parameter_summary(config) -> list[tuple[str, int]]:
    """Parameter counts per component and per task's own parameters, built on the meta device."""
    from .modeling_faceptor import FaceptorModel

    with torch.device("meta"):
        model = FaceptorModel(config)
    rows = [(name, sum(p.numel() for p in module.parameters())) for name, module in model.named_children()]
    for spec in config.task_specs.values():
        own = sum(
            container[spec.name].numel()
            for container in (
                model.decoder.query_features,
                model.decoder.query_position_embeddings,
                getattr(model.decoder, "task_level_embeddings", {}),
            )
            if spec.name in container
        )
        rows.append((f"  task {spec.name} ({spec.kind}, {spec.num_queries} queries)", own))
    return rows


def command_summary(args: argparse.Namespace) -> None:
    config = load_config(args.model)
    rows = parameter_summary(config)
    total = sum(count for name, count in rows if not name.startswith("  "))
    width = max(len(name) for name, _ in rows)
    print(f"{args.model}: {total / 1e6:.1f}M parameters")
    for name, count in rows:
        print(f"{name:<{width}}  {count / 1e6:>8.3f}M")


def command_convert(args: argparse.Namespace) -> None:
    from .conversion import CheckpointError, convert_farl, convert_official_checkpoint

    try:
        if args.source == "official":
            report = convert_official_checkpoint(
                args.checkpoint,
                args.output_dir,
                keep_loss_weights=args.keep_loss_weights,
                encoder_heads=args.encoder_heads,
                decoder_heads=args.decoder_heads,
                new_feature_layers=args.new_feature_layers,
            )
        else:
            overrides = {} if args.encoder_heads is None else {"num_attention_heads": args.encoder_heads}
            report = convert_farl(args.checkpoint, args.output_dir, preset=args.preset, **overrides)
    except CheckpointError as error:
        raise CommandError(str(error)) from None
    print(f"wrote {args.output_dir}")
    print(report.summary())


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}


def expand_inputs(paths: Sequence[str]) -> list[str]:
    """Files as given, folders expanded to their image files (sorted); missing paths are kept so that they
    are reported as bad inputs, not skipped."""
    expanded = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise CommandError(f"{path}: folder has no image files")
            expanded += found
        else:
            expanded.append(path)
    return expanded


def load_pipeline(model: str, device: str | None, dtype: str = "float32"):
    from transformers import pipeline

    if not os.path.isdir(model):
        raise CommandError(f"{model}: no such model folder")
    try:
        return pipeline("face-perception", model=model, device=device, dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"{model}: cannot load a Faceptor model ({str(error).splitlines()[0]})") from None


def command_predict(args: argparse.Namespace) -> int:
    import json

    from tqdm.auto import tqdm

    from .processing.image_loading import load_image

    images = expand_inputs(args.images)
    model = args.model
    if model is None:
        from .default_model import announce_demo_model, demo_model_path

        try:
            model = demo_model_path()
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
        announce_demo_model()
    face_pipeline = load_pipeline(model, args.device, args.dtype)
    if args.compile:
        # In place (Module.compile), so the weights keep their names; each new crop size compiles once.
        face_pipeline.model.encoder.compile()
    if args.tasks:
        try:
            face_pipeline.task_specs(args.tasks)
        except ValueError as error:
            raise CommandError(str(error)) from None
    detector = None if args.no_detector else "auto"
    output = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    if args.visualize:
        os.makedirs(args.visualize, exist_ok=True)
    bad = 0
    try:
        with tqdm(total=len(images), unit="image", desc="faceptor", disable=args.quiet) as progress:
            for start in range(0, len(images), args.batch_size):
                chunk = images[start : start + args.batch_size]
                results = face_pipeline(chunk, tasks=args.tasks, detector=detector, batch_size=args.batch_size)
                for path, result in zip(chunk, results, strict=True):
                    if "error" in result or "warning" in result:
                        bad += 1
                        message = result.get("error") or f"{path}: {result['warning']}"
                        progress.write(f"faceptor: error: {message}", file=sys.stderr)
                    if "error" not in result:
                        output.write(json.dumps(result) + "\n")
                        if args.visualize:
                            from .processing.visualization import draw_result

                            stem = os.path.splitext(os.path.basename(path))[0]
                            draw_result(load_image(path), result).save(os.path.join(args.visualize, f"{stem}.jpg"))
                progress.update(len(chunk))
    finally:
        if output is not sys.stdout:
            output.close()
    return 1 if bad else 0


def command_export(args: argparse.Namespace) -> None:
    from .export import export_onnx
    from .modeling_faceptor import FaceptorModel

    if not os.path.isdir(args.model):
        raise CommandError(f"{args.model}: no such model folder")
    model = FaceptorModel.from_pretrained(args.model).eval()
    try:
        differences = export_onnx(model, args.output, tasks=args.tasks, input_size=args.size, check=not args.no_check)
    except ValueError as error:
        raise CommandError(str(error)) from None
    print(f"wrote {args.output}")
    for task, difference in differences.items():
        print(f"  {task}: largest difference to PyTorch {difference:.2e}")


def command_evaluate(args: argparse.Namespace) -> None:
    import json

    import numpy as np

    from .modeling_faceptor import FaceptorModel
    from .processing.image_processing_faceptor import CLIP_MEAN, CLIP_STD, HALF
    from .train.augmentation import build_eval_transform
    from .train.data import READERS, DatasetFormatError, load_face_dataset
    from .train.datasets import build_task_dataset
    from .train.evaluation import evaluate_task, evaluate_verification, save_worst_cases

    if not os.path.isdir(args.model):
        raise CommandError(f"{args.model}: no such model folder")
    if not os.path.exists(args.data):
        raise CommandError(f"{args.data}: no such dataset folder")
    model = FaceptorModel.from_pretrained(args.model).eval().to(args.device or "cpu")
    specs = model.config.task_specs
    if args.task not in specs:
        raise CommandError(f"the model has no task {args.task!r}; its tasks are {list(specs)}")
    spec = specs[args.task]
    reader = args.reader or ("verification" if spec.kind == "embedding" else args.task)
    if reader not in READERS:
        raise CommandError(f"no dataset reader {reader!r}; pass --reader, one of {', '.join(READERS)}")
    try:
        if spec.kind == "embedding":
            pairs = load_face_dataset(reader, args.data, args.split)
            transform = build_eval_transform(spec.kind, spec.input_size)
            scores = evaluate_verification(model, args.task, pairs, transform, args.batch_size, not args.quiet)
        else:
            dataset = build_task_dataset(spec.to_dict(), reader, args.data, args.split, train=False)
            scores, predictions, references, errors = evaluate_task(
                model, args.task, dataset, reader, args.batch_size, args.limit, not args.quiet
            )
            if args.visualize:
                dense = spec.category == "dense"
                save_worst_cases(spec.kind, dataset, predictions, references, errors, args.visualize,
                                 mean=CLIP_MEAN if dense else HALF, std=CLIP_STD if dense else HALF,
                                 labels=spec.labels)  # fmt: skip
    except (DatasetFormatError, FileNotFoundError) as error:
        raise CommandError(str(error)) from None
    scalars = {name: float(value) for name, value in scores.items() if np.isscalar(value)}
    width = max(len(name) for name in scalars)
    print(f"{args.task} on {reader} {args.split}:")
    for name, value in scalars.items():
        print(f"  {name:<{width}}  {value:.4f}")
    output = args.output or f"metrics_{args.task}_{args.split}.json"
    with open(output, "w") as handle:
        json.dump({"task": args.task, "reader": reader, "split": args.split, "scores": scalars}, handle, indent=1)
    print(f"wrote {output}")


def build_parser() -> argparse.ArgumentParser:
    from .conversion import layer_list

    parser = argparse.ArgumentParser(prog="faceptor", description="Faceptor: one model for every face task.")
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="parameter counts of a preset or a saved model")
    summary.add_argument("model", nargs="?", default="faceptor-base", help="preset name or model folder")
    summary.set_defaults(handler=command_summary)

    convert = commands.add_parser("convert", help="convert official Faceptor or FaRL weights to a model folder")
    sources = convert.add_subparsers(dest="source", required=True)
    official = sources.add_parser("official", help="an official checkpoint (checkpoint_rank0_iter_*.pth.tar)")
    official.add_argument("--keep-loss-weights", action="store_true", help="also save the loss module's weights")
    official.add_argument("--decoder-heads", type=int, default=8, help="decoder attention heads (official: 8)")
    official.add_argument(
        "--new-feature-layers", type=layer_list, help="stage-2 levels' encoder layers (official: 1,3,5,7,9)"
    )
    farl = sources.add_parser("farl", help="FaRL weights (.pth) or the same in Transformers CLIPModel layout")
    farl.add_argument("--preset", default="faceptor-base", help="tasks and decoder of the new model")
    for parser_ in (official, farl):
        parser_.add_argument("checkpoint", help="checkpoint file (or CLIPModel folder)")
        parser_.add_argument("output_dir", help="folder to write the model to")
        parser_.add_argument("--encoder-heads", type=int, help="encoder attention heads (default: width / 64)")
    from .conversion_naive import add_convert_naive_command

    add_convert_naive_command(sources)  # faceptor convert official-naive CKPT OUT_DIR
    convert.set_defaults(handler=command_convert)

    from .parameter_table import add_compare_params_command

    add_compare_params_command(commands)  # faceptor compare-params [PRESET | TASK ...]

    predict = commands.add_parser("predict", help="run every task on images; JSON lines out")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--model", help="Faceptor model folder (default: the bundled demo model)")
    predict.add_argument("--tasks", nargs="+", help="task names (default: all the model's tasks)")
    predict.add_argument("--output", help="write JSON lines here instead of standard output")
    predict.add_argument("--visualize", metavar="OUT_DIR", help="write a picture of each result here")
    predict.add_argument("--no-detector", action="store_true", help="take each image as one face crop")
    predict.add_argument("--batch-size", type=int, default=8, help="images (and faces) per batch")
    predict.add_argument("--device", help="torch device, e.g. cuda:0 (default: CPU)")
    predict.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                         help="weights and activations; bfloat16 is faster on recent CPUs and GPUs")  # fmt: skip
    predict.add_argument("--compile", action="store_true",
                         help="torch.compile the encoder: slow first batch, then faster")  # fmt: skip
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=command_predict)

    export = commands.add_parser("export", help="export a model for other runtimes")
    formats = export.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser("onnx", help="an ONNX graph of a task set, checked with onnxruntime")
    onnx.add_argument("model", help="model folder")
    onnx.add_argument("output", help="the .onnx file to write")
    onnx.add_argument("--tasks", nargs="+", help="tasks (default: all; they must share a crop size)")
    onnx.add_argument("--size", type=int, help="crop size (default: the tasks' own)")
    onnx.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    export.set_defaults(handler=command_export)

    from .hub import add_push_command

    add_push_command(commands)  # faceptor push MODEL_DIR REPO

    evaluate = commands.add_parser("evaluate", help="score a task on a dataset with the paper's protocol")
    evaluate.add_argument("--model", required=True, help="model folder")
    evaluate.add_argument("--task", required=True, help="task name, e.g. align_300w")
    evaluate.add_argument("--data", required=True, help="the dataset's root folder, as downloaded")
    evaluate.add_argument("--split", default="test", help="split (see faceptor.train.data.SPLITS)")
    evaluate.add_argument("--reader", help="dataset reader (default: the task's name; identity: verification)")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--limit", type=int, help="score only the first N samples")
    evaluate.add_argument("--output", help="JSON file of the scores (default: metrics_<task>_<split>.json)")
    evaluate.add_argument("--visualize", metavar="DIR", help="save pictures of the worst cases here")
    evaluate.add_argument("--device", help="torch device (default: CPU)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=command_evaluate)

    # `faceptor train ...` is handed whole to faceptor.train.run (see main); listed here for --help.
    commands.add_parser("train", help="multi-task training from a YAML config: faceptor train --config CFG")
    commands.add_parser("distill", help="rebuild the bundled demo model: faceptor distill all OUT --install")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from .train.run import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["distill"]:
        from .train.distill.cli import main as distill_main

        return distill_main(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        return args.handler(args) or 0
    except CommandError as error:
        print(f"faceptor: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
