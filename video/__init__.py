"""Faces in videos: frames read on a background thread, faces tracked across frames, optional temporal smoothing
and annotated videos written back. A tool of the package, never part of the remote code."""

from .reading import (
    VIDEO_SUFFIXES,
    Frame,
    NoVideoFramesError,
    VideoDecodeError,
    VideoError,
    VideoInfo,
    is_video_path,
    read_frames,
    video_info,
)

__all__ = [
    "VIDEO_SUFFIXES",
    "Frame",
    "NoVideoFramesError",
    "VideoDecodeError",
    "VideoError",
    "VideoInfo",
    "is_video_path",
    "read_frames",
    "video_info",
]
