"""Turned views of a face, for the profiles the registry photos lack: the face mesh's 3-D points are turned
about the head's vertical axis and the picture is warped with them, triangle by triangle (the idea behind
300W-LP's face profiling, Zhu et al., CVPR 2016). The points around the face (hair, ears) turn with the head;
the picture's border stays put. The teachers then label the new picture like any other."""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, Delaunay

HEAD_CENTRE_BEHIND_FACE = 0.5  # the turning axis lies this many face widths behind the mesh's mean depth
# Rings of points around the face (hair, ears, neck), at these multiples of the face outline's distance from its
# centre, turn with the head at the axis's depth; the picture's border stays put.
HEAD_RING_SCALES = (1.3, 1.7)
BORDER_POINTS_PER_SIDE = 5


def _rings(mesh: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The face outline (the mesh's convex hull) scaled about its centre by each of HEAD_RING_SCALES."""
    outline = mesh[ConvexHull(mesh).vertices]
    return np.concatenate([centre + scale * (outline - centre) for scale in HEAD_RING_SCALES])


def _border(height: int, width: int) -> np.ndarray:
    """Points along the picture's edges, corners included."""
    xs = np.linspace(0, width - 1, BORDER_POINTS_PER_SIDE)
    ys = np.linspace(0, height - 1, BORDER_POINTS_PER_SIDE)
    edges = [np.column_stack([xs, np.zeros_like(xs)]), np.column_stack([xs, np.full_like(xs, height - 1)])]
    edges += [np.column_stack([np.zeros_like(ys), ys]), np.column_stack([np.full_like(ys, width - 1), ys])]
    return np.unique(np.concatenate(edges), axis=0)


def turn_face(image: np.ndarray, mesh: np.ndarray, depth: np.ndarray, angle: float) -> np.ndarray:
    """`image` (H, W, 3) uint8 with the face's 468 mesh points (x, y) and depths in its pixels, turned by
    `angle` radians about the head's vertical axis (positive: towards the image's right). Returns the new
    (H, W, 3) uint8 picture; the faces' labels are the teachers' to give."""
    import cv2

    height, width = image.shape[:2]
    mesh, depth = np.asarray(mesh, np.float64), np.asarray(depth, np.float64)
    face_width = float(np.ptp(mesh[:, 0]))
    centre = mesh.mean(axis=0)
    axis_depth = depth.mean() + HEAD_CENTRE_BEHIND_FACE * face_width
    rings = _rings(mesh, centre)
    border = _border(height, width)
    source = np.concatenate([mesh, rings, border])
    depths = np.concatenate([depth, np.full(len(rings), axis_depth), np.full(len(border), np.inf)])
    moving = np.arange(len(source)) < len(mesh) + len(rings)
    cos, sin = np.cos(angle), np.sin(angle)
    target = source.copy()
    dx, dz = source[moving, 0] - centre[0], depths[moving] - axis_depth
    target[moving, 0] = centre[0] + cos * dx - sin * dz
    turned_depths = depths.copy()
    turned_depths[moving] = axis_depth + sin * dx + cos * dz

    triangles = Delaunay(source).simplices
    # Painter's order: around the face first, then the face's own triangles from the farthest, so that what
    # turns in front covers what turns behind and the face covers what was around it.
    on_face = (triangles < len(mesh)).all(axis=1)
    order = np.lexsort((-turned_depths[triangles].mean(axis=1), on_face))
    map_x = np.full((height, width), -1.0, np.float32)
    map_y = np.full((height, width), -1.0, np.float32)
    for triangle in triangles[order]:
        destination = target[triangle].astype(np.float32)
        x0, y0 = np.floor(destination.min(axis=0)).astype(int)
        x1, y1 = np.ceil(destination.max(axis=0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        inverse = cv2.getAffineTransform(destination, source[triangle].astype(np.float32))
        if not np.all(np.isfinite(inverse)):
            continue  # a triangle turned edge-on
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(mask, np.round(destination - [x0, y0]).astype(np.int32), 1)
        ys, xs = np.nonzero(mask)
        xs, ys = xs + x0, ys + y0
        map_x[ys, xs] = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
        map_y[ys, xs] = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
