"""Property-based tests: random bytes and random JSON make the readers raise only their documented exceptions.

* :func:`monai_spine.data.readers.read_xray` -> :class:`XrayReadError` (or a successful read);
* :func:`monai_spine.data.annotation.read_annotation` -> :class:`AnnotationError`;
* :func:`monai_spine.measure.io.read_keypoint_file` -> :class:`AnnotationError`.

Warnings (spacing rejected, colour converted, constant image) are allowed. Examples are bounded
(``max_examples``) so the file runs in seconds; hypothesis shrinks any failure to a small input.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reliability_corpus import good_annotation_dict  # noqa: E402

from monai_spine.data.annotation import AnnotationError, read_annotation  # noqa: E402
from monai_spine.data.readers import XrayReadError, read_xray  # noqa: E402
from monai_spine.measure.io import read_keypoint_file  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: file headers that route random bytes into each reader's deeper code
PREFIXES = {
    ".dcm": [b"", b"\x00" * 128 + b"DICM", b"\x00" * 128 + b"DICM\x02\x00\x10\x00UI"],
    ".png": [b"", b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"],
    ".jpg": [b"\xff\xd8\xff"],
    ".tif": [b"II*\x00", b"MM\x00*"],
    ".bmp": [b"BM"],
    ".nii": [b""],
    ".nrrd": [b"NRRD0004\n", b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 4 4\nencoding: raw\n\n"],
}


def _write(data: bytes, suffix: str) -> str:
    fd, name = tempfile.mkstemp(suffix=suffix, prefix="fuzz-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return name


def _call(fn, path, allowed):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(path)
    except allowed as e:
        assert str(path) in str(e), f"message does not name the file: {e}"
    finally:
        os.unlink(path)


@st.composite
def image_bytes(draw):
    suffix = draw(st.sampled_from(sorted(PREFIXES)))
    prefix = draw(st.sampled_from(PREFIXES[suffix]))
    return suffix, prefix + draw(st.binary(max_size=600))


@settings(SETTINGS, max_examples=100)
@given(image_bytes())
def test_random_bytes_give_only_xray_read_errors(case):
    suffix, data = case
    _call(read_xray, _write(data, suffix), XrayReadError)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)

_GOOD = good_annotation_dict()
_PATHS = [(), ("format",), ("version",), ("region",), ("scheme",), ("image_size",), ("spacing_mm",),
          ("spacing_source",), ("meta",), ("vertebrae",), ("vertebrae", 0), ("vertebrae", 0, "level"),
          ("vertebrae", 0, "keypoints_px"), ("vertebrae", 0, "keypoints_px", 1), ("vertebrae", 1, "visible"),
          ("vertebrae", 1, "box_px"), ("vertebrae", 1, "outline_px"), ("point_names",)]


@st.composite
def annotation_json(draw):
    """A valid annotation with one field (or the whole document) replaced by random JSON."""
    d = json.loads(json.dumps(_GOOD))
    where = draw(st.sampled_from(_PATHS))
    value = draw(json_values)
    if not where:
        return value
    node = d
    for key in where[:-1]:
        node = node[key]
    if draw(st.booleans()) and isinstance(node, dict):
        node.pop(where[-1], None)
    else:
        node[where[-1]] = value
    return d


@SETTINGS
@given(annotation_json())
def test_random_annotation_json_gives_only_annotation_errors(doc):
    _call(read_annotation, _write(json.dumps(doc).encode(), ".json"), AnnotationError)


@SETTINGS
@given(st.one_of(annotation_json(), json_values))
def test_random_keypoint_json_gives_only_annotation_errors(doc):
    if isinstance(doc, dict) and "format" not in doc:
        doc = {**doc, "scheme": doc.get("scheme", "lateral5"), "vertebrae": doc.get("vertebrae", [])}
    _call(read_keypoint_file, _write(json.dumps(doc).encode(), ".json"), AnnotationError)


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_as_json_give_only_annotation_errors(data):
    _call(read_annotation, _write(data, ".json"), AnnotationError)
    _call(read_keypoint_file, _write(data, ".json"), AnnotationError)
