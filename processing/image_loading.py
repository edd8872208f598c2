"""Loading user images robustly: paths, PIL images and arrays in any common mode, with typed errors."""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_IMAGE_SIDE = 16  # below this no face can be told apart
# The pixel budget of one photo or video frame, by its decoded size as the header states it (checked before any
# pixel is decoded): 50 megapixels (8000 x 6000 photos, 8K video frames) take about 150 MB as RGB, and several
# times that in the detector; a small file that decodes to more (a 9000 x 9000 PNG) is refused in one line.
MAX_DECODED_PIXELS = 50_000_000
MAX_STREAM_BYTES = 1 << 30  # what is read from a pipe (`<(cat photo.jpg)`) before it is refused as too large
# Always taken from a folder, whatever Pillow's plugins say.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"})
IDENTIFY_ONLY_FORMATS = frozenset({"MPEG"})  # Pillow recognises these files but cannot decode their pixels


class ImageLoadError(ValueError):
    """An input that cannot be used as a face image; the message names the input and the reason."""


def describe_source(source: object) -> str:
    """A short name for an input, for messages and results."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"PIL image {source.size[0]}x{source.size[1]} {source.mode}"
    if isinstance(source, np.ndarray):
        return f"array {tuple(source.shape)} {source.dtype}"
    return type(source).__name__


def image_suffixes() -> frozenset[str]:
    """The file extensions (lower case, with the dot) a folder of images is searched for: every format Pillow can
    open and decode here, as when such a file is named directly (`.avif`, `.jfif`, `.tga`, ...), and
    `IMAGE_SUFFIXES`. Not stubs needing a handler nobody installed, nor EPS without Ghostscript."""
    from PIL import EpsImagePlugin, ImageFile

    found = set(IMAGE_SUFFIXES)
    for suffix, image_format in Image.registered_extensions().items():
        if image_format not in Image.OPEN or image_format in IDENTIFY_ONLY_FORMATS:
            continue
        factory = Image.OPEN[image_format][0]
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        if image_format == "EPS" and not EpsImagePlugin.has_ghostscript():
            continue
        found.add(suffix.lower())
    return frozenset(found)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Brings integer images of any depth and float images in [0, 1] or [0, 255] to uint8."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) > 255 else 255
        return np.clip(array.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(f"{name}: the image has NaN or infinite values")
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        return np.clip(array * scale, 0, 255).round().astype(np.uint8)
    raise ImageLoadError(f"{name}: unsupported pixel type {array.dtype}")


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first -> last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageLoadError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    array = _to_uint8(array, name)
    if array.shape[-1] == 4:
        alpha = array[..., 3:].astype(np.float32) / 255.0
        array = (array[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)  # over white
    return np.ascontiguousarray(array)


def _pil_to_rgb(image: Image.Image, name: str) -> np.ndarray:
    image = ImageOps.exif_transpose(image)  # respect the camera's orientation tag
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.asarray(image), name)  # high bit depth: scale, don't clip
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        return _array_to_rgb(np.asarray(image.convert("RGBA")), name)
    return np.asarray(image.convert("RGB")).copy()


def check_pixel_budget(width: int, height: int, name: str) -> None:
    """Refuses (`ImageLoadError`) a photo or video frame that decodes to more than `MAX_DECODED_PIXELS`."""
    if width * height > MAX_DECODED_PIXELS:
        raise ImageLoadError(
            f"{name}: refused, {width}x{height} decodes to {width * height / 1e6:.0f} megapixels, "
            f"over the limit of {MAX_DECODED_PIXELS / 1e6:.0f} (possible decompression bomb)"
        )


def _read_stream(path: Path, name: str) -> io.BytesIO:
    """The bytes of a pipe or device, whole (at most `MAX_STREAM_BYTES`)."""
    with open(path, "rb") as stream:
        data = stream.read(MAX_STREAM_BYTES + 1)
    if not data:
        raise ImageLoadError(f"{name}: empty input (the pipe gave no bytes)")
    if len(data) > MAX_STREAM_BYTES:
        raise ImageLoadError(f"{name}: more than {MAX_STREAM_BYTES >> 20} MB from a pipe; refused")
    return io.BytesIO(data)


def load_image(source: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """Any supported input -> an (H, W, 3) uint8 RGB array.

    Paths are opened with EXIF rotation applied; grayscale, RGBA, CMYK, palette and 16-bit images are
    converted; decompression bombs (more decoded pixels than `MAX_DECODED_PIXELS`, read from the header, or than
    `PIL.Image.MAX_IMAGE_PIXELS`), pipes over `MAX_STREAM_BYTES`, truncated and non-image files raise
    [`ImageLoadError`] naming the input. A pipe or device (`<(cat photo.jpg)`) is read whole, then decoded.
    """
    name = describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(f"{name}: no such file")
        if path.is_dir():
            raise ImageLoadError(f"{name}: is a folder, not an image")
        mode = path.stat().st_mode
        if stat.S_ISREG(mode) and path.stat().st_size == 0:
            raise ImageLoadError(f"{name}: empty file")
        try:
            # A pipe or device (`<(cat photo.jpg)`, /dev/stdin) is read once, whole; Pillow needs to seek.
            opened = path if stat.S_ISREG(mode) else _read_stream(path, name)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(opened) as image:
                    check_pixel_budget(image.width, image.height, name)  # from the header, before decoding
                    image.load()
                    array = _pil_to_rgb(image, name)
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageLoadError(f"{name}: refused, too many pixels (possible decompression bomb): {error}") from None
        except UnidentifiedImageError:
            raise ImageLoadError(f"{name}: not an image file (or a format Pillow cannot read)") from None
        except MemoryError:
            raise ImageLoadError(f"{name}: too large to decode in the memory available") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageLoadError(f"{name}: cannot decode, truncated or corrupt ({error})") from None
        except Exception as error:  # Pillow's format plugins raise many other types on corrupt files
            raise ImageLoadError(f"{name}: cannot decode, corrupt ({type(error).__name__}: {error})") from None
    elif isinstance(source, Image.Image):
        check_pixel_budget(source.width, source.height, name)
        array = _pil_to_rgb(source, name)
    elif isinstance(source, np.ndarray):
        array = _array_to_rgb(source, name)
    else:
        raise ImageLoadError(f"{name}: expected a path, a PIL image or a numpy array")
    height, width = array.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageLoadError(f"{name}: {width}x{height} is too small to hold a face (minimum {MIN_IMAGE_SIDE} px)")
    return array
