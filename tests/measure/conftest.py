"""Hand-built vertebra geometry shared by the measurement tests.

Lateral vertebrae are rectangles (depth ``D`` mm along the endplates, height ``H`` mm) chained from
the bottom up: each segment's upper vertebra is rotated by the requested intervertebral angle and
shifted by the requested translation, so the expected numbers are the construction's inputs.
AP vertebrae are rectangles with a given tilt, so the angle between two tilts is their difference.
"""

from __future__ import annotations

import numpy as np
import pytest


def _frame(phi_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in image coordinates (x right, y down) of a line at frame angle ``phi``
    (posterior = +x, superior = -y): ``e`` along the endplate (anterior -> posterior), ``up`` superior."""
    p = np.radians(phi_deg)
    e = np.array([np.cos(p), -np.sin(p)])
    up = np.array([-np.sin(p), -np.cos(p)])
    return e, up


def build_lateral_chain(
    seg_angles_deg, translations_mm, depth_mm=15.0, height_mm=10.0, disc_mm=4.0, base_deg=0.0, origin_mm=(50.0, 200.0)
) -> np.ndarray:
    """(N, 5, 2) points in mm, top to bottom, ``AS, PS, AI, PI, SP``.

    Segment ``i`` (vertebra ``i`` over ``i + 1``) has intervertebral angle ``seg_angles_deg[i]``
    (lordosis positive) and translation ``translations_mm[i]`` (anterolisthesis positive).
    """
    seg = list(seg_angles_deg)
    tr = list(translations_mm)
    assert len(seg) == len(tr)

    def vertebra(ps, phi):
        e, up = _frame(phi)
        as_ = ps - depth_mm * e
        pi = ps - height_mm * up
        ai = as_ - height_mm * up
        sp = ps + 0.8 * depth_mm * e - 0.5 * height_mm * up
        return np.stack([as_, ps, ai, pi, sp])

    phi = base_deg
    verts = [vertebra(np.asarray(origin_mm, float), phi)]
    for alpha, t in zip(reversed(seg), reversed(tr)):
        lower = verts[-1]
        e_l, up_l = _frame(phi)
        pi_u = lower[1] - t * e_l + disc_mm * up_l
        phi = phi - alpha
        e_u, up_u = _frame(phi)
        ps_u = pi_u + height_mm * up_u
        verts.append(vertebra(ps_u, phi))
    return np.stack(verts[::-1])


def build_ap_spine(tilts_deg, centres_px, width_px=40.0, height_px=30.0) -> np.ndarray:
    """(N, 4, 2) corners ``TL, TR, BL, BR`` of rectangles rotated by ``tilts_deg`` about their centres."""
    out = []
    for t, c in zip(tilts_deg, centres_px):
        a = np.radians(t)
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        local = np.array([[-width_px / 2, -height_px / 2], [width_px / 2, -height_px / 2],
                          [-width_px / 2, height_px / 2], [width_px / 2, height_px / 2]])
        out.append(np.asarray(c, float) + local @ r.T)
    return np.stack(out)


@pytest.fixture
def lateral_chain():
    return build_lateral_chain


@pytest.fixture
def ap_spine():
    return build_ap_spine
