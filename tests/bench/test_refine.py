"""The refine-passes benchmark: its table, the split export and one run on the shipped cervical models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monai_spine.bench.refine import RefineRow, export_split, refine_errors, refine_table
from monai_spine.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "bundle" / "models" / "cervical"


@pytest.mark.parametrize(
    "errors, cells",
    [
        ([1.0, 2.0, 3.0, 10.0], ["2", "4", "4.00", "2.50", "7.90", "0.50"]),  # p90: 3 + 0.7 x 7
        ([], ["2", "0", "—", "—", "—", "—"]),
    ],
)
def test_row_cells_are_hand_computed(errors, cells):
    assert RefineRow(2, np.array(errors), 0.5).cells() == cells


def test_table_has_one_line_per_row():
    text = refine_table([RefineRow(0, np.ones(3), 0.1), RefineRow(1, np.zeros(3), 0.2)])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 0 | 3 | 1.00") and lines[3].startswith("| 1 | 3 | 0.00")


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    return [str(p) for p in generate_dataset(tmp_path_factory.mktemp("films"), "cervical", 2, seed=7, size=512)]


def test_export_links_films_and_annotations_and_refuses_a_full_folder(films, tmp_path):
    out = export_split(films, tmp_path / "split")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([Path(f).name for f in films] + [Path(f).with_suffix(".dcm").name for f in films])
    assert all((out / n).is_symlink() for n in names)
    with pytest.raises(ValueError, match="not an empty folder"):
        export_split(films, out)


@pytest.mark.skipif(not (SHIPPED / "regressor" / "model.pt").is_file(), reason="shipped cervical models absent")
def test_refine_errors_on_the_shipped_models(films):
    rows = refine_errors(films, SHIPPED / "regressor", SHIPPED / "detector", passes=(0, 2), mc_samples=2)
    assert [r.passes for r in rows] == [0, 2]
    assert rows[0].errors_mm.size == rows[1].errors_mm.size > 0  # the same matched points for every count
    assert np.all(np.isfinite(rows[1].errors_mm)) and rows[1].errors_mm.mean() < 2.0  # mm, shipped model


def test_recut_shift_table_ranks_each_signal_against_the_error():
    from monai_spine.bench.refine import recut_shift_table

    err = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    sig = {"error_mm": err, "sigma_total_mm": err * 2, "sigma_aleatoric_mm": err[::-1].copy(),
           "sigma_epistemic_mm": np.array([1.0, 3.0, 2.0, 5.0, 4.0]), "shift_prev_mm": np.zeros(5),
           "shift_next_mm": err[::-1].copy()}
    table = recut_shift_table(sig, weights=(1.0,))
    assert table.splitlines()[0] == "5 points, mean error 0.620 mm"
    cells = dict([c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()[4:])
    assert cells["σp total"] == "+1.000" and cells["σp aleatoric"] == "-1.000"
    assert cells["σp epistemic"] == "+0.800"  # ranks 1 3 2 5 4 against 1 2 3 4 5: 1 - 6 * 4 / 120
    assert cells["shift, previous re-cut"] == "+nan"  # a constant signal ranks nothing
    assert cells["sqrt(σp total² + 1 shift previous²)"] == "+1.000"
