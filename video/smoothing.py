"""Temporal smoothing of a tracked face's box and landmarks with the One-Euro filter (Casiez, Roussel and Vogel,
CHI 2012): strong smoothing while the face is still, little lag while it moves."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

DEFAULT_MIN_CUTOFF_HZ = 1.0  # cutoff frequency at rest: lower removes more jitter
DEFAULT_BETA = 0.5  # cutoff increase per face-size-per-second of speed: higher follows fast moves with less lag
DEFAULT_DERIVATIVE_CUTOFF_HZ = 1.0
DEFAULT_RESET_AFTER_S = 1.0  # a track unseen for longer starts afresh, so a returning face does not glide in
SMOOTHED_KEYS = ("box", "landmarks")


def _smoothing_factor(cutoff_hz: np.ndarray | float, period_s: float) -> np.ndarray | float:
    tau = 1.0 / (2 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / period_s)


class OneEuroFilter:
    """One-Euro filter of an array of values (each element filtered on its own). `scale` divides the speed before
    it raises the cutoff, so that `beta` does not depend on the units (a face's size in pixels, for example)."""

    def __init__(
        self,
        min_cutoff_hz: float = DEFAULT_MIN_CUTOFF_HZ,
        beta: float = DEFAULT_BETA,
        derivative_cutoff_hz: float = DEFAULT_DERIVATIVE_CUTOFF_HZ,
    ):
        self.min_cutoff_hz, self.beta, self.derivative_cutoff_hz = min_cutoff_hz, beta, derivative_cutoff_hz
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._time_s = 0.0

    def __call__(self, value: np.ndarray, time_s: float, scale: float = 1.0) -> np.ndarray:
        value = np.asarray(value, np.float64)
        if self._value is None or self._value.shape != value.shape or time_s <= self._time_s:
            self._value, self._speed, self._time_s = value, np.zeros_like(value), time_s
            return value
        period = time_s - self._time_s
        speed = (value - self._value) / period
        self._speed += _smoothing_factor(self.derivative_cutoff_hz, period) * (speed - self._speed)
        cutoff = self.min_cutoff_hz + self.beta * np.abs(self._speed) / max(scale, 1e-9)
        self._value = self._value + _smoothing_factor(cutoff, period) * (value - self._value)
        self._time_s = time_s
        return self._value


class FaceSmoother:
    """One-Euro filters of each track's `box` and `landmarks` (result dicts with a `track_id`), updated in place;
    speed is measured in face sizes (the box's longer side) per second."""

    def __init__(
        self,
        min_cutoff_hz: float = DEFAULT_MIN_CUTOFF_HZ,
        beta: float = DEFAULT_BETA,
        reset_after_s: float = DEFAULT_RESET_AFTER_S,
    ):
        self.min_cutoff_hz, self.beta, self.reset_after_s = min_cutoff_hz, beta, reset_after_s
        self._filters: dict[tuple[int, str], OneEuroFilter] = {}
        self._last_seen: dict[int, float] = {}

    def smooth(self, faces: Iterable[dict], time_s: float) -> None:
        for face in faces:
            track_id = face["track_id"]
            if time_s - self._last_seen.get(track_id, time_s) > self.reset_after_s:
                self._forget(track_id)
            self._last_seen[track_id] = time_s
            x0, y0, x1, y1 = face["box"]
            size = max(x1 - x0, y1 - y0, 1.0)
            for key in SMOOTHED_KEYS:
                if key in face:
                    flt = self._filters.setdefault((track_id, key), OneEuroFilter(self.min_cutoff_hz, self.beta))
                    face[key] = np.round(flt(face[key], time_s, size), 2).tolist()
        for track_id in [track for track, seen in self._last_seen.items() if time_s - seen > self.reset_after_s]:
            self._forget(track_id)  # memory stays flat over a long video with many passing faces

    def _forget(self, track_id: int) -> None:
        self._last_seen.pop(track_id, None)
        for key in SMOOTHED_KEYS:
            self._filters.pop((track_id, key), None)
