"""Fixtures of the reliability tests: the bad-input corpus (see ``reliability_corpus.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_corpus import BAD_ANNOTATIONS, build_image_corpus, write_json_case  # noqa: E402


@pytest.fixture(scope="module")
def image_corpus(tmp_path_factory) -> dict[str, Path]:
    return build_image_corpus(tmp_path_factory.mktemp("bad_images"))


@pytest.fixture(scope="module")
def annotation_corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_annotations")
    return {name: write_json_case(root / name, content) for name, (content, _) in BAD_ANNOTATIONS.items()}
