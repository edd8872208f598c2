"""Backends that run MTCNN's networks besides torch: onnxruntime on the CPU, the same ONNX files, called like the
torch modules. The module imports onnxruntime only when a backend is made, so the detector needs it only if chosen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .mtcnn_networks import INSTALL_HINT, DetectorUnavailable, pnet_output_size


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise DetectorUnavailable(f"The onnxruntime backend needs onnxruntime: {INSTALL_HINT}") from error
    return onnxruntime


class OnnxRuntimeNetwork:
    """One of the ONNX files run by onnxruntime, called like its torch module (CPU tensors in and out).

    On the CPU onnxruntime runs these small networks faster than torch (benchmarks/detector_speed.py).
    """

    def __init__(self, path: Path, num_threads: int | None):
        onnxruntime = import_onnxruntime()
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, images: torch.Tensor) -> list[torch.Tensor]:
        # The converted networks take (N, W, H, 3): x and y swapped, channels last.
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(images.permute(0, 3, 2, 1).numpy())})
        return [torch.from_numpy(output) for output in outputs]

    def __call__(self, images: torch.Tensor, valid_sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if valid_sizes is None:
            outputs = self._run(images)
            if outputs[0].ndim == 2:  # R-Net, O-Net: ONNX gives the softmax last, as the torch modules do
                return tuple(outputs)
            return tuple(output.permute(0, 3, 2, 1) for output in outputs)
        # P-Net on a padded batch: each image alone at its own size, its maps padded back (padding is masked later).
        maps = [[], []]
        for image, (height, width) in zip(images, valid_sizes.tolist(), strict=True):
            for slot, output in enumerate(self._run(image[None, :, :height, :width])):
                maps[slot].append(output.permute(0, 3, 2, 1)[0])
        cells_h, cells_w = pnet_output_size(images.shape[2]), pnet_output_size(images.shape[3])
        return tuple(
            torch.stack([F.pad(m, (0, cells_w - m.shape[2], 0, cells_h - m.shape[1])) for m in found]) for found in maps
        )


__all__ = ["OnnxRuntimeNetwork", "import_onnxruntime"]
