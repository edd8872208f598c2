"""`faceptor evaluate`: one task of a model scored on a public dataset with the paper's protocol."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from ..modeling_faceptor import FaceptorModel
from ..processing.image_processing_faceptor import CLIP_MEAN, CLIP_STD, HALF
from .errors import CommandError
from .model_loading import load_model_folder


def command_evaluate(args: argparse.Namespace) -> None:
    from ..train.augmentation import build_eval_transform
    from ..train.data import READERS, DatasetFormatError, load_face_dataset
    from ..train.data.task_dataset import build_task_dataset
    from ..train.evaluation import evaluate_task, evaluate_verification, save_worst_cases

    if not os.path.isdir(args.model):
        raise CommandError(f"{args.model}: no such model folder")
    if not os.path.exists(args.data):
        raise CommandError(f"{args.data}: no such dataset folder")
    model = load_model_folder(args.model, FaceptorModel).to(args.device or "cpu")
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
                save_worst_cases(
                    spec.kind,
                    dataset,
                    predictions,
                    references,
                    errors,
                    args.visualize,
                    mean=CLIP_MEAN if dense else HALF,
                    std=CLIP_STD if dense else HALF,
                    labels=spec.labels,
                )
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
