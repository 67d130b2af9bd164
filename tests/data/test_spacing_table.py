"""Tests of the pixel spacing tables (BUU-LSPINE report sheet, CSXA pixel equivalents) and the spacing precedence."""

from __future__ import annotations

import pytest

from monai_spine.data.annotation import AnnotationError
from monai_spine.data.spacing_table import (
    SpacingTableError,
    explicit_spacing,
    lookup_spacing,
    parse_spacing_value,
    read_spacing_table,
    resolve_spacing,
)


@pytest.mark.parametrize(
    "value, unit, expected",
    [
        ("0.14", "mm_per_px", (0.14, 0.14)),
        (0.175, "mm_per_px", (0.175, 0.175)),
        ("[0.15, 0.16]", "mm_per_px", (0.16, 0.15)),  # DICOM order: row, column
        ("0.15\\0.16", "mm_per_px", (0.16, 0.15)),
        ("10", "px_per_mm", (0.1, 0.1)),
        ("", "mm_per_px", None),
    ],
)
def test_parse_spacing_value(value, unit, expected):
    got = parse_spacing_value(value, unit=unit)
    assert got == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize("value, match", [("7.0", "pixels per mm"), ("0", "positive"), ("a b", "not one or two"),
                                          ("1 2 3", "not one or two"), ("-0.1", "positive")])
def test_parse_spacing_value_errors(value, match):
    with pytest.raises(SpacingTableError, match=match):
        parse_spacing_value(value, where="t.csv: row 2")


def test_explicit_spacing_is_sx_sy():
    assert explicit_spacing((0.1, 0.2)) == (0.1, 0.2)
    assert explicit_spacing(0.3) == (0.3, 0.3)
    with pytest.raises(SpacingTableError):
        explicit_spacing(0.0)


def test_read_spacing_table_csv_export(tmp_path):
    p = tmp_path / "Pixel Spacing.csv"
    p.write_text("filename,pixel_spacing\n0001-F-037Y,0.14\n0002-M-050Y,\"[0.15, 0.16]\"\n,0.2\n0003-F-010Y,\n",
                 encoding="utf-8-sig")
    table = read_spacing_table(p)
    assert table == {"0001-f-037y": (0.14, 0.14), "0002-m-050y": (0.16, 0.15)}
    assert lookup_spacing(table, "0001-F-037Y") == (0.14, 0.14)
    assert lookup_spacing(table, "LA/0001-F-037Y.jpg") == (0.14, 0.14)  # folder and extension dropped
    assert lookup_spacing(table, "0001-F-037Y1") is None
    # a BUU-LSPINE image by its patient key without the view digit (the reader passes it)
    assert lookup_spacing(table, "0001-F-037Y1", ["0001-F-037Y"]) == (0.14, 0.14)
    assert lookup_spacing(table, "0001-F-037Y0", ["nothing", "0001-F-037Y"]) == (0.14, 0.14)
    assert lookup_spacing(table, "0003-F-010Y1", ["0003-F-010Y"]) is None  # empty cell: row skipped


def test_read_spacing_table_named_columns_and_semicolons(tmp_path):
    p = tmp_path / "meta.csv"
    p.write_text("No;Pixel equivalent (mm);Age\nimg_001.png;0.1;40\n", encoding="utf-8")
    with pytest.raises(SpacingTableError, match="no key column"):
        read_spacing_table(p)
    assert read_spacing_table(p, key_column="No") == {"img_001": (0.1, 0.1)}


@pytest.mark.parametrize(
    "text, match",
    [
        ("filename,age\na,3\n", "no spacing column"),
        ("filename,pixel_spacing\na,0.1\na,0.2\n", "conflicts"),
        ("filename,pixel_spacing\na,12\n", "row 2"),
        ("", "empty"),
    ],
)
def test_read_spacing_table_errors(tmp_path, text, match):
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(SpacingTableError, match=match):
        read_spacing_table(p)


def test_read_spacing_table_xlsx(tmp_path):
    p = tmp_path / "KIOM2022_dataset_report.xlsx"
    try:
        import openpyxl
    except ImportError:
        p.write_bytes(b"PK\x03\x04 not really a workbook")
        with pytest.raises(SpacingTableError, match="export the 'Pixel Spacing' sheet as CSV"):
            read_spacing_table(p)
        return
    wb = openpyxl.Workbook()
    wb.active.title = "Pos_LA"
    ws = wb.create_sheet("Pixel Spacing")
    ws.append(["filename", "pixel_spacing"])
    ws.append(["0001-F-037Y", 0.14])
    wb.save(p)
    assert read_spacing_table(p) == {"0001-f-037y": (0.14, 0.14)}



@pytest.mark.parametrize(
    "spacing_mm, table, stem, fallback, expected",
    [
        ((0.1, 0.2), {"a": (0.3, 0.3)}, "a", (), ((0.1, 0.2), "sidecar", "given by the user")),
        (None, {"a": (0.3, 0.3)}, "A", (), ((0.3, 0.3), "sidecar", "spacing table t.csv")),
        (None, {"0001-f-037y": (0.14, 0.14)}, "0001-F-037Y1", ("0001-F-037Y",),
         ((0.14, 0.14), "sidecar", "spacing table t.csv")),
        (None, {"0001-f-037y": (0.14, 0.14)}, "0001-F-037Y1", (), (None, "unknown", None)),
        (None, None, "a", (), (None, "unknown", None)),
    ],
)
def test_resolve_spacing_precedence(spacing_mm, table, stem, fallback, expected):
    assert resolve_spacing(spacing_mm, table, stem, "t.csv", fallback) == expected


# ----------------------------------------------------------------------------------------------
# random input: only the documented exceptions come out (issue #9)
# ----------------------------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_cell = st.sampled_from(["", "0", "1.5", "-3", "nan", "inf", "x", "1e400", "[0.1, 0.2]", "\x00", "\"", "0.14"])
_csv_text = st.lists(st.lists(_cell, max_size=6).map(",".join), max_size=12).map("\n".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | _csv_text.map(lambda t: ("filename,pixel_spacing\n" + t).encode("utf-8")))
def test_random_spacing_table_gives_only_documented_errors(tmp_path, data):
    p = tmp_path / "t.csv"
    p.write_bytes(data)
    try:
        table = read_spacing_table(p)
    except AnnotationError:
        return
    for sx, sy in table.values():
        assert 0.005 <= sx <= 5 and 0.005 <= sy <= 5
