"""Every subcommand's arguments, buildable without torch or transformers, so that `faceptor --help`, a
subcommand's --help and a usage error answer at once: a handler is named here and imported when its command runs
(`Handler`). The tools keep their code in their own modules; `cli.py` puts these parsers together."""

from __future__ import annotations

import argparse
import importlib
import json
import os
from importlib import resources

from .parquet_output import OUTPUT_FORMATS

DEFAULT_HOST = "127.0.0.1"  # `faceptor demo`: this machine only; --host 0.0.0.0 serves the network
DEFAULT_PORT = 7860  # Gradio's usual port, as on Spaces
# `faceptor demo` without measured pairs for a model: a usual operating point of CosFace / ArcFace embeddings (such
# as Faceptor's recog_ms1mv3); check it on pairs of your own.
DEFAULT_IDENTITY_THRESHOLD = 0.3
DEFAULT_COMMIT_MESSAGE = "Upload Faceptor model"
PACKAGE = __package__.rpartition(".")[0]  # "faceptor"

EXIT_CODES = """exit status:
  0  every input was processed (images without a face included: their record has "faces": [])
  1  some inputs could not be used (unreadable, corrupt, too large, a failed crop or picture): one line each on
     standard error, no record in the output; the results of the others are all written
  2  usage error, nothing processed: bad arguments, an unusable --model, --device or --output, an --output or
     --visualize that would overwrite an input, an --output another run is writing (OUTPUT.lock)

Limits: a photo or video frame that decodes to more than 50 megapixels (read from its header, before decoding) is
refused as too large (exit 1, the others processed). Outputs: a FIFO, /dev/null or /dev/stdout as --output is written
into, never replaced; --output and --visualize may not be one path or one inside the other. Ctrl-C exits 130 and
SIGTERM 143, after removing the run's temporary, lock and partial files.

Images without a face are counted in one line on standard error. At a terminal, standard output gets a few lines
per image and a closing line instead (images, faces, errors, where the results went); piped or with --output, the
records. The output is always valid JSON lines (or, with
--output-format parquet, a Parquet file of the same records, one row each): a value holding NaN or infinity is
written as null and its key named in the face's "non_finite" list."""


class Handler:
    """A command's function, named by its module (relative to this package) and imported when called."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, args: argparse.Namespace):
        return getattr(importlib.import_module(self.module, __package__), self.name)(args)

    def __repr__(self) -> str:
        return f"Handler({self.module!r}, {self.name!r})"


def paper_result_presets() -> list[str]:
    """The presets whose paper numbers a card can carry (`faceptor push --paper-results`), read from the table
    without the card machinery."""
    table = resources.files(f"{PACKAGE}.hub_cards").joinpath("paper_results.json").read_text(encoding="utf-8")
    return sorted(json.loads(table))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_rate(text: str) -> float:
    """argparse type of `--fps`: a positive, finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of frames a second, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def layer_list(text: str) -> list[int]:
    """`"1,3,5"` -> `[1, 3, 5]`, as an argparse type for the converters' layer options."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}") from None


def _task_group(text: str) -> tuple[str, list[str]]:
    group, separator, names = text.partition("=")
    if not separator or not group or not names:
        raise argparse.ArgumentTypeError(f"expected GROUP=TASK[,TASK...], got {text!r}")
    return group, [name for name in names.split(",") if name]


def add_summary_command(subparsers) -> argparse.ArgumentParser:
    """Adds `faceptor summary [PRESET | MODEL_DIR]` to the CLI's subcommands."""
    summary = subparsers.add_parser("summary", help="parameter counts of a preset or a saved model")
    summary.add_argument(
        "model",
        nargs="?",
        help="preset name (faceptor-base, faceptor-full) or model folder (default: the bundled "
        "demo model, as the other commands)",
    )
    summary.set_defaults(handler=Handler(".compare_params", "command_summary"))
    return summary


def add_compare_params_command(subparsers) -> argparse.ArgumentParser:
    """Adds `compare-params` to the `faceptor` command's subparsers:
    `faceptor compare-params [faceptor-base | faceptor-full | TASK ...]`."""
    parser = subparsers.add_parser(
        "compare-params", help="parameters of Faceptor vs Naive Faceptor for a task list (paper Tables 1 and 3)"
    )
    parser.add_argument(
        "tasks",
        nargs="*",
        help="a preset (faceptor-base, faceptor-full) or official task names (default: faceptor-base)",
    )
    parser.add_argument(
        "--one-head-per-task", action="store_true", help="Naive Faceptor: no task shares a head (paper Table 1)"
    )
    parser.set_defaults(handler=Handler(".compare_params", "_command_compare_params"))
    return parser


def add_convert_command(subparsers):
    """Adds `faceptor convert {official,farl} CHECKPOINT OUT_DIR` to the CLI's subcommands; returns the
    subparsers of the checkpoint sources, for `convert_naive` to add its own."""
    convert = subparsers.add_parser("convert", help="convert official Faceptor or FaRL weights to a model folder")
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
        parser_.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it holds files")
    convert.set_defaults(handler=Handler(".convert", "command_convert"))
    return sources


def add_convert_naive_command(sources):
    """Adds `official-naive` to the subparsers of `faceptor convert`:
    `faceptor convert official-naive CHECKPOINT OUTPUT_DIR [--task-group GROUP=TASK,...] ...`."""
    parser = sources.add_parser(
        "official-naive", help="an official Naive Faceptor checkpoint (expreiments/naive_faceptor)"
    )
    parser.add_argument("checkpoint", help="checkpoint file (checkpoint_rank0_iter_*.pth.tar)")
    parser.add_argument("output_dir", help="folder to write the model to")
    parser.add_argument("--keep-loss-weights", action="store_true", help="also save the loss module's weights")
    parser.add_argument("--encoder-heads", type=int, help="encoder attention heads (default: width / 64)")
    parser.add_argument(
        "--task-group",
        type=_task_group,
        action="append",
        metavar="GROUP=TASK[,TASK...]",
        help="the official task names of a head, in channel order (needed when a dense head's size is ambiguous)",
    )
    parser.add_argument("--dense-layers", type=layer_list, help="layers the dense heads read (official: 3,5,7,11)")
    parser.add_argument("--attribute-layers", type=layer_list, help="attribute heads' layers (official: 5,7,9,11)")
    parser.add_argument("--identity-layer", type=int, help="the identity heads' layer (official: 11)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it holds files")
    parser.set_defaults(handler=Handler(".convert_naive", "_command_convert_naive"))
    return parser


def add_predict_command(subparsers) -> argparse.ArgumentParser:
    """Adds `faceptor predict IMAGE ... [--model DIR]` to the CLI's subcommands; its usage errors are one line."""
    predict = subparsers.add_parser(
        "predict",
        help="run every task on images; JSON lines out",
        description="Every task of a Faceptor model on images and videos: JSON lines "
        "out, one per image (or video frame with faces), in input order;\nor a Parquet "
        "file of the same records (--output-format parquet).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("images", nargs="+", help="image or video files, or folders of them")
    predict.add_argument("--model", help="Faceptor model folder (default: the bundled demo model)")
    predict.add_argument("--tasks", nargs="+", help="task names (default: all the model's tasks)")
    predict.add_argument(
        "--output",
        help="write the results here instead of standard output (never over an input; "
        "one run at a time, through OUTPUT.lock)",
    )
    predict.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        default="jsonl",
        help="jsonl: one JSON line per image or video frame with faces (default); parquet: the same "
        "records as rows of the --output file, written in row groups as they come (needs "
        "pyarrow; for large runs)",
    )
    predict.add_argument(
        "--visualize",
        metavar="OUT_DIR",
        help="write a picture of each result here (a video's: "
        "NAME/frame_NNNNNN.jpg; or name one video's annotated OUT.mp4), named by the "
        "input's path inside what was given (never over an input)",
    )
    predict.add_argument("--no-detector", action="store_true", help="take each image as one face crop")
    sampling = predict.add_mutually_exclusive_group()
    sampling.add_argument("--every", type=_positive, metavar="N", help="videos: every N-th frame (default: all)")
    sampling.add_argument("--fps", type=positive_rate, metavar="F", help="videos: about F frames a second")
    predict.add_argument(
        "--smooth", action="store_true", help="videos: One-Euro smoothing of each face track's box and landmarks"
    )
    predict.add_argument("--batch-size", type=_positive, default=8, help="faces per forward pass of the model")
    predict.add_argument(
        "--images-in-flight",
        type=_positive,
        default=16,
        metavar="N",
        help="decoded images held ahead of the model (bounds memory; default 16)",
    )
    predict.add_argument(
        "--workers",
        type=_positive,
        default=min(4, os.cpu_count() or 1),
        help="threads decoding images (and drawing pictures)",
    )
    predict.add_argument(
        "--decode",
        choices=["auto", "pil", "device"],
        default="auto",
        help="JPEGs decoded by Pillow, or by nvJPEG on the CUDA --device (auto: on CUDA)",
    )
    predict.add_argument("--device", help="torch device, e.g. cuda:0 (default: CPU)")
    predict.add_argument(
        "--detector-device",
        help="where the face detector runs (default: the --device; on the CPU through onnxruntime on the decoding "
        "threads, on a GPU batched in torch on the decoded pixels there)",
    )
    predict.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="weights and activations; bfloat16 is faster on recent CPUs and GPUs",
    )
    predict.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the model at fixed batch shapes: slow first batch per crop size, then "
        "faster (default: on for a CUDA --device)",
    )
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=Handler(".predict", "command_predict"))
    predict.error = lambda message: predict.exit(2, f"{predict.prog}: error: {message} (see --help)\n")  # one line
    return predict


def add_demo_command(subparsers) -> argparse.ArgumentParser:
    """Adds `faceptor demo` to the CLI's subcommands."""
    demo = subparsers.add_parser("demo", help="a browser page (Gradio) to try the model on photos")
    demo.add_argument("--model", help="model folder or Hub repo (default: the bundled demo model)")
    demo.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    demo.add_argument("--host", default=DEFAULT_HOST, help=f"address to serve on (default {DEFAULT_HOST})")
    demo.add_argument("--share", action="store_true", help="also serve on a temporary public gradio.live link")
    demo.add_argument("--device", help="torch device for the model, e.g. cuda:0 (default: CPU)")
    demo.add_argument(
        "--identity-threshold",
        type=float,
        help="cosine at or above which two faces are the same person (default: from the model's "
        f"measured pairs when it has them, else {DEFAULT_IDENTITY_THRESHOLD})",
    )
    demo.set_defaults(handler=Handler(".demo", "command_demo"))
    return demo


def add_export_command(subparsers) -> argparse.ArgumentParser:
    """Adds `faceptor export onnx MODEL_DIR OUT.onnx` to the CLI's subcommands."""
    export = subparsers.add_parser("export", help="export a model for other runtimes")
    formats = export.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser("onnx", help="an ONNX graph of a task set, checked with onnxruntime")
    onnx.add_argument("model", help="model folder")
    onnx.add_argument("output", help="the .onnx file to write")
    onnx.add_argument("--tasks", nargs="+", help="tasks (default: all; they must share a crop size)")
    onnx.add_argument("--size", type=int, help="crop size (default: the tasks' own)")
    onnx.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    export.set_defaults(handler=Handler(".export", "command_export"))
    return export


def add_push_command(subparsers) -> argparse.ArgumentParser:
    """Adds `faceptor push MODEL_DIR REPO` to the CLI's subcommands."""
    push = subparsers.add_parser(
        "push", help="upload a model folder to the Hub with its remote code, image processor, pipeline and card"
    )
    push.add_argument("model_dir", help="model folder (save_pretrained or `faceptor convert` output)")
    push.add_argument("repo_id", help="Hub repo, e.g. user/faceptor-base (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument(
        "--token", help="Hub token (default: HF_TOKEN or the stored login; prefer those, a flag shows in `ps`)"
    )
    push.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE, help="commit message")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for the Hub to connect or answer each request (default: HF_HUB_DOWNLOAD_TIMEOUT, 10)",
    )
    push.add_argument(
        "--paper-results",
        choices=paper_result_presets(),
        help="the weights are the authors' checkpoint of this model: put the paper's numbers in the card",
    )
    push.add_argument(
        "--space", metavar="USER/NAME", help="also push a Gradio Space running the browser demo on the pushed model"
    )
    push.set_defaults(handler=Handler(".push", "command_push"))
    return push


def add_evaluate_command(subparsers) -> argparse.ArgumentParser:
    """Adds `faceptor evaluate --model DIR --task NAME --data ROOT` to the CLI's subcommands."""
    evaluate = subparsers.add_parser("evaluate", help="score a task on a dataset with the paper's protocol")
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
    evaluate.set_defaults(handler=Handler(".evaluate", "command_evaluate"))
    return evaluate
