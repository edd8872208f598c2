"""Face tracks across video frames: each frame's faces are matched to the live tracks by box overlap and, when the
model gives identity embeddings, by their cosine similarity, so a face that leaves the view and comes back within a
few seconds gets its track id back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_GAP_S = 3.0  # a track unseen for longer ends; a face coming back later starts a new one
DEFAULT_MIN_IOU = 0.3  # box overlap that alone links a face to a track
DEFAULT_MIN_SIMILARITY = 0.5  # embedding cosine that alone links a face to a track (e.g. after leaving the view)
EMBEDDING_MOMENTUM = 0.8  # a track's embedding: running mean, so one blurred frame does not change who it is


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """`(A, 4)` and `(B, 4)` [x0, y0, x1, y1] boxes -> `(A, B)` intersection over union."""
    a, b = np.asarray(boxes_a, np.float64).reshape(-1, 4), np.asarray(boxes_b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).clip(0).prod(-1), (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    last_seen_s: float
    embedding: np.ndarray | None


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


class FaceTracker:
    """Gives each face of successive frames a track id (0, 1, 2... in order of first appearance; never reused).

    A face and a live track (seen within `max_gap_s`) are a candidate pair when their boxes overlap by at least
    `min_iou`, or when both have embeddings with cosine at least `min_similarity`; the pairs are taken greedily by
    IoU + cosine, best first, one face per track. A face with no pair starts a new track."""

    def __init__(
        self,
        max_gap_s: float = DEFAULT_MAX_GAP_S,
        min_iou: float = DEFAULT_MIN_IOU,
        min_similarity: float = DEFAULT_MIN_SIMILARITY,
    ):
        self.max_gap_s, self.min_iou, self.min_similarity = max_gap_s, min_iou, min_similarity
        self._tracks: list[_Track] = []
        self._next_id = 0

    def update(
        self, boxes: Sequence[Sequence[float]], time_s: float, embeddings: Sequence[Sequence[float]] | None = None
    ) -> list[int]:
        """The track id of each face of the frame at `time_s` (boxes in image pixels; embeddings, if any, one per
        face), in the order given. Frames must come in time order."""
        self._tracks = [track for track in self._tracks if time_s - track.last_seen_s <= self.max_gap_s]
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        given = list(embeddings) if embeddings is not None else [None] * len(boxes)
        if len(given) != len(boxes):
            raise ValueError(f"got {len(given)} embeddings for {len(boxes)} boxes")
        vectors = [None if vector is None else _unit(np.asarray(vector, np.float64)) for vector in given]
        ids: list[int | None] = [None] * len(boxes)
        if len(boxes) and self._tracks:
            overlap = box_iou(boxes, np.stack([track.box for track in self._tracks]))
            pairs = []
            for face, vector in enumerate(vectors):
                for column, track in enumerate(self._tracks):
                    similarity = None
                    if vector is not None and track.embedding is not None:
                        similarity = float(vector @ track.embedding)
                    linked = overlap[face, column] >= self.min_iou
                    linked = linked or (similarity is not None and similarity >= self.min_similarity)
                    if linked:
                        pairs.append((overlap[face, column] + (similarity or 0.0), face, column))
            taken_faces, taken_tracks = set(), set()
            for _, face, column in sorted(pairs, reverse=True):
                if face in taken_faces or column in taken_tracks:
                    continue
                taken_faces.add(face)
                taken_tracks.add(column)
                track = self._tracks[column]
                track.box, track.last_seen_s = boxes[face], time_s
                if vectors[face] is not None:
                    track.embedding = (
                        vectors[face]
                        if track.embedding is None
                        else _unit(EMBEDDING_MOMENTUM * track.embedding + (1 - EMBEDDING_MOMENTUM) * vectors[face])
                    )
                ids[face] = track.track_id
        for face, track_id in enumerate(ids):
            if track_id is None:
                ids[face] = self._next_id
                self._tracks.append(_Track(self._next_id, boxes[face], time_s, vectors[face]))
                self._next_id += 1
        return ids
