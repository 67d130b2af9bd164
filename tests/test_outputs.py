"""Tests of the checks a command runs before any work (monai_spine/outputs.py)."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.outputs import NothingFoundError, check_film_has_contrast


@pytest.mark.parametrize(
    "image, message",
    [
        (np.full((1, 1), 128, np.uint8), "constant image (1 pixel, every one = 128), no contrast"),
        (np.full((1, 4, 5), 2000, np.uint16), "constant image (20 pixels, every one = 2000), no contrast"),
        (np.array([[0.5, np.nan], [0.5, np.inf]]), "constant image (4 pixels, every one = 0.5), no contrast"),
        (np.full((2, 2), np.nan), "no finite pixel value"),
    ],
)
def test_a_film_without_contrast_is_nothing_found(image, message):
    with pytest.raises(NothingFoundError) as e:
        check_film_has_contrast(image, "films/a.png")
    assert str(e.value) == f"nothing found in films/a.png: {message}"
    assert isinstance(e.value, ValueError)  # the CLI's one-line user error


@pytest.mark.parametrize("image", [np.array([[0, 1]], np.uint8), np.array([[0.5, np.nan, 0.25]]),
                                   np.array([[-1, 0]], np.int16)])
def test_a_film_with_any_contrast_passes(image):
    check_film_has_contrast(image, "a.png")  # no exception
