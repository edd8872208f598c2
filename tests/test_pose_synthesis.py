"""Turned views (`pose_synthesis.turn_face`): the warp follows the mesh's turned 3-D points, keeps the picture
where nothing turns, and lets what turns in front cover what turns behind."""

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("scipy")

from faceptor.train.distill.pose_synthesis import HEAD_CENTRE_BEHIND_FACE, turn_face  # noqa: E402

SIZE = 200


def ball_face(radius: float = 40.0, centre=(100.0, 100.0)) -> tuple[np.ndarray, np.ndarray]:
    """468 points on the front half of a ball (x, y in pixels; depth grows away from the camera)."""
    rng = np.random.default_rng(0)
    offsets = rng.uniform(-1, 1, (4000, 2))
    offsets = offsets[np.hypot(*offsets.T) < 0.95][:467] * radius
    offsets = np.vstack([[0.0, 0.0], offsets])  # point 0: the front-most, the "nose"
    depth = -np.sqrt(radius**2 - np.sum(offsets**2, axis=1))
    return (offsets + centre).astype(np.float32), depth.astype(np.float32)


def picture_with_nose(mesh: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    image = rng.integers(40, 120, (SIZE, SIZE, 3), dtype=np.uint8)
    x, y = np.round(mesh[0]).astype(int)
    image[y - 2 : y + 3, x - 2 : x + 3] = (255, 0, 0)  # a red nose tip
    return image


def red_centre(image: np.ndarray) -> np.ndarray:
    red = (image[..., 0] > 200) & (image[..., 1] < 60)
    ys, xs = np.nonzero(red)
    assert len(xs), "the nose tip disappeared"
    return np.array([xs.mean(), ys.mean()])


def test_no_turn_leaves_the_picture_as_it_was():
    mesh, depth = ball_face()
    image = picture_with_nose(mesh)
    turned = turn_face(image, mesh, depth, 0.0)
    assert np.abs(turned.astype(int) - image.astype(int)).mean() < 1.0


@pytest.mark.parametrize("degrees", [-40.0, 30.0])
def test_the_nose_tip_moves_where_its_turned_3d_point_projects(degrees):
    mesh, depth = ball_face()
    image = picture_with_nose(mesh)
    turned = turn_face(image, mesh, depth, np.radians(degrees))
    face_width = np.ptp(mesh[:, 0])
    axis_depth = depth.mean() + HEAD_CENTRE_BEHIND_FACE * face_width
    centre_x = mesh[:, 0].mean()
    angle = np.radians(degrees)
    expected_x = centre_x + np.cos(angle) * (mesh[0, 0] - centre_x) - np.sin(angle) * (depth[0] - axis_depth)
    found = red_centre(turned)
    assert found[0] == pytest.approx(expected_x, abs=1.5)
    assert found[1] == pytest.approx(mesh[0, 1], abs=1.5)
    assert np.sign(found[0] - mesh[0, 0]) == np.sign(degrees)  # positive turns look towards the image's right
    # The picture's corners do not move.
    np.testing.assert_array_equal(turned[:5, :5], image[:5, :5])


def test_what_turns_in_front_covers_what_turns_behind():
    # A ball turned by 80 degrees: the nose tip swings out to the side and stays visible (it is in front),
    # while the points that were at the ball's far edge now lie behind it.
    mesh, depth = ball_face()
    image = picture_with_nose(mesh)
    far_edge = np.argmin(mesh[:, 0])
    x, y = np.round(mesh[far_edge]).astype(int)
    image[y - 1 : y + 2, x - 1 : x + 2] = (0, 255, 0)  # the far edge, green
    turned = turn_face(image, mesh, depth, np.radians(-80.0))
    red_centre(turned)
    assert green_pixels(turned) < 3  # hidden behind the ball's front
    assert green_pixels(turn_face(image, mesh, depth, np.radians(80.0))) >= 9  # turned the other way, it shows


def green_pixels(image: np.ndarray) -> int:
    return int(((image[..., 1] > 200) & (image[..., 0] < 60)).sum())
