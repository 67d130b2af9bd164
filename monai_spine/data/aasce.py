"""Reader for the AASCE 2019 / SpineWeb dataset 16 ("boostnet_labeldata") label files.

Folder layout (the dataset's original files, read in place)::

    <root>/images/<name>.jpg            # 8-bit grayscale AP radiographs; names contain spaces
    <root>/labels/filenames.csv         # one image file name per line (row i of the CSVs below)
    <root>/labels/landmarks.csv         # 136 numbers per row: 68 x / W, then 68 y / H
    <root>/labels/angles.csv            # 3 Cobb angles (degrees): main, proximal, distal
    <root>/labels/<name>.jpg.mat        # MATLAB file, variable ``p2``: (68, 2) pixel (x, y)

The 68 points are 17 vertebrae top to bottom (T1..T12, L1..L5) times 4 corners in the order
top-left, top-right, bottom-left, bottom-right *as displayed*, which is exactly the project's
``ap4`` scheme (``TL, TR, BL, BR``) of the ``ap`` region, so each image becomes one
:class:`~monai_spine.data.annotation.SpineAnnotation` with ``keypoints_px`` of shape (17, 4, 2).

Coordinates: ``landmarks.csv`` holds ``x / W`` and ``y / H`` (not the project's ``(x + 0.5) / W``
fractions), so pixels are recovered as ``x_px = value * W``, ``y_px = value * H`` with ``(W, H)``
read from the JPEG header. The ``.mat`` files hold the same points as integer pixels; both sources
agree within 0.05 px. The files' pixel coordinates are taken as they are (the dataset does not say
whether its integer clicks are 0- or 1-based; the possible offset of at most 1 px is well below
the label noise).

The images carry no pixel spacing: every annotation has ``spacing_mm=None`` and
``spacing_source="unknown"``, so errors are reported in pixels (or relative to vertebra size).

Label order fix: on 18 of the 481 films the file's vertebra list is rotated by one, the T1 points stored
last (as "L5", above the file's "T1", which is anatomically T2, down to its "L4" on the last lumbar
vertebra above the sacrum; checked on the films). :func:`fix_rotated_levels` puts such a list back in
level order when the rotation is the only explanation (the last vertebra above the first, every
centre in level order once it is moved to the front, and its gap to the next no more than twice the
film's median gap); ``meta["label_fix"]`` says so. The other films with centres out of order
(L5 on L4, L5 in mid-film, T1 and T2 crossed: 6 films) are left as they are and reported.

Label noise is reported, never fatal: :func:`find_label_noise` lists, per annotation, vertebrae
whose top corner lies below the bottom corner of the same side, whose left and right corners are
swapped, whose centre is not below the previous vertebra's centre, and points outside the image.
"""

from __future__ import annotations

import csv
import os
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from monai_spine.data.annotation import AnnotationError, SpineAnnotation, atomic_write_text, write_annotation
from monai_spine.data.keypoints import get_region, get_scheme

__all__ = [
    "AASCE_NUM_VERTEBRAE",
    "AASCE_NUM_POINTS",
    "COBB_ANGLE_NAMES",
    "LABEL_NOISE_KINDS",
    "AasceError",
    "AasceDataset",
    "resolve_aasce_root",
    "read_aasce",
    "read_aasce_filenames",
    "read_aasce_landmarks",
    "read_aasce_mat",
    "read_cobb_angles",
    "read_image_size",
    "find_label_noise",
    "fix_rotated_levels",
    "LABEL_FIX_ROTATED",
    "aasce_group",
    "aasce_batch",
    "split_aasce",
    "write_aasce_dataset",
    "ensure_aasce_dataset",
    "AASCE_SPLIT_FRACTIONS",
]

#: vertebrae per image (T1..T12, L1..L5)
AASCE_NUM_VERTEBRAE = 17
#: points per image (17 vertebrae x 4 corners)
AASCE_NUM_POINTS = 68
#: column order of ``angles.csv``: the main (largest) curve, the curve above it, the curve below it
COBB_ANGLE_NAMES = ("main", "proximal", "distal")
#: issue kinds reported by :func:`find_label_noise`; each issue string starts with ``"<kind>: "``
LABEL_NOISE_KINDS = (
    "non_finite_point",
    "point_outside_image",
    "top_below_bottom",
    "left_right_swapped",
    "centre_out_of_order",
)

_DATASET_DIR = "aasce-train"


class AasceError(AnnotationError):
    """The AASCE label files are malformed or inconsistent; the message names the file and row."""


def resolve_aasce_root(root: str | os.PathLike | None = None) -> Path:
    """Return the dataset folder: ``root`` itself if it holds ``labels/filenames.csv``, else
    ``root/aasce-train`` (so the shared data root may be passed as well).

    Args:
        root: a folder; ``None`` means ``$MONAI_SPINE_DATA``, else ``<repo root>/../shared/data``.

    Raises:
        FileNotFoundError: neither folder holds ``labels/filenames.csv``.
    """
    if root is None:
        root = os.environ.get("MONAI_SPINE_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
    root = Path(root)
    for cand in (root, root / _DATASET_DIR):
        if (cand / "labels" / "filenames.csv").is_file():
            return cand
    raise FileNotFoundError(f"no AASCE labels/filenames.csv under {root} or {root / _DATASET_DIR}")


def read_aasce_filenames(root: str | os.PathLike) -> list[str]:
    """Image file names in the row order of the label CSVs (names keep their spaces).

    Args:
        root: dataset folder (see :func:`resolve_aasce_root`).
    """
    path = resolve_aasce_root(root) / "labels" / "filenames.csv"
    with open(path, encoding="utf-8", newline="") as f:
        names = [line.rstrip("\r\n") for line in f]
    while names and not names[-1].strip():
        names.pop()
    for i, n in enumerate(names):
        if not n.strip():
            raise AasceError(f"{path}: row {i} is empty")
    return names


def _read_numeric_csv(path: Path, num_cols: int) -> np.ndarray:
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != num_cols:
                raise AasceError(f"{path}: row {i} has {len(row)} values, expected {num_cols}")
            try:
                rows.append([float(c) for c in row])
            except ValueError:
                raise AasceError(f"{path}: row {i} is not numeric: {row[:4]}...") from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, num_cols)


def read_aasce_landmarks(root: str | os.PathLike) -> np.ndarray:
    """The normalised landmarks of ``landmarks.csv``.

    Returns:
        (M, 68, 2) float64 array of ``(x / W, y / H)`` per point, rows in ``filenames.csv`` order
        (multiply by ``(W, H)`` to get pixels; this is *not* the project's ``_frac`` convention).
    """
    flat = _read_numeric_csv(resolve_aasce_root(root) / "labels" / "landmarks.csv", 2 * AASCE_NUM_POINTS)
    return np.stack([flat[:, :AASCE_NUM_POINTS], flat[:, AASCE_NUM_POINTS:]], axis=-1)


def read_cobb_angles(root: str | os.PathLike) -> np.ndarray:
    """Cobb angles of ``angles.csv``.

    Returns:
        (M, 3) float64 array in degrees, columns :data:`COBB_ANGLE_NAMES` (main, proximal,
        distal), rows in ``filenames.csv`` order.
    """
    return _read_numeric_csv(resolve_aasce_root(root) / "labels" / "angles.csv", len(COBB_ANGLE_NAMES))


def read_aasce_mat(path: str | os.PathLike) -> np.ndarray:
    """The 68 pixel points of one ``<image>.jpg.mat`` file (variable ``p2``).

    Returns:
        (68, 2) float64 array, (x, y) pixels.

    Raises:
        AasceError: the file has no ``p2`` of shape (68, 2).
    """
    from scipy.io import loadmat

    m = loadmat(str(path), variable_names=["p2"])
    if "p2" not in m:
        raise AasceError(f"{path}: no variable 'p2'")
    p = np.asarray(m["p2"], dtype=np.float64)
    if p.shape != (AASCE_NUM_POINTS, 2):
        raise AasceError(f"{path}: 'p2' has shape {p.shape}, expected ({AASCE_NUM_POINTS}, 2)")
    return p


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(W, H) of an image from its header, without decoding the pixels.

    Raises:
        FileNotFoundError: the image does not exist.
        AasceError: the file is not an image PIL can identify.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # lazy: reads the header only
            w, h = im.size
    except UnidentifiedImageError:
        raise AasceError(f"{path}: not a readable image") from None
    return int(w), int(h)


def find_label_noise(annotation: SpineAnnotation) -> list[str]:
    """Report implausible corner labels of one annotation (any scheme with four corners).

    Checks, in this order (at most one issue per vertebra and kind, except per point for the first
    two; ``level`` is named in the message):

    * ``non_finite_point``: a visible point with a NaN/inf coordinate;
    * ``point_outside_image``: a point outside ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (needs
      ``image_size``);
    * ``top_below_bottom``: a top corner lies below (larger y than) the bottom corner of the
      same side (TL/BL or TR/BR; AS/AI or PS/PI for lateral schemes);
    * ``left_right_swapped``: (``ap4`` only) a left corner lies right of the right corner of the
      same edge (TL/TR or BL/BR);
    * ``centre_out_of_order``: the mean of the vertebra's visible corners is not below (y not
      larger than) that of the vertebra listed before it.

    Args:
        annotation: the record to check; it is not modified.

    Returns:
        Issue strings ``"<kind>: <level>: <detail>"`` (kinds in :data:`LABEL_NOISE_KINDS`); empty
        when nothing was found.
    """
    sch = get_scheme(annotation.scheme)
    kp, vis = annotation.keypoints_px, annotation.visible
    issues: list[str] = []
    names = sch.point_names
    for i, lev in enumerate(annotation.levels):
        for j in range(sch.num_points):
            if vis[i, j] and not np.all(np.isfinite(kp[i, j])):
                issues.append(f"non_finite_point: {lev}: {names[j]} = {kp[i, j].tolist()}")
    ok = vis & np.all(np.isfinite(kp), axis=-1)
    if annotation.image_size is not None:
        w, h = annotation.image_size
        for i, lev in enumerate(annotation.levels):
            for j in range(sch.num_points):
                x, y = kp[i, j]
                if ok[i, j] and not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
                    issues.append(
                        f"point_outside_image: {lev}: {names[j]} = ({x:.1f}, {y:.1f}) outside {w} x {h} px"
                    )
    tl, tr, bl, br = sch.corner_indices
    for i, lev in enumerate(annotation.levels):
        bad = [
            f"{names[top]} y={kp[i, top, 1]:.1f} > {names[bot]} y={kp[i, bot, 1]:.1f}"
            for top, bot in ((tl, bl), (tr, br))
            if ok[i, top] and ok[i, bot] and kp[i, top, 1] > kp[i, bot, 1]
        ]
        if bad:
            issues.append(f"top_below_bottom: {lev}: " + "; ".join(bad))
    if sch.name == "ap4":
        for i, lev in enumerate(annotation.levels):
            bad = [
                f"{names[left]} x={kp[i, left, 0]:.1f} > {names[right]} x={kp[i, right, 0]:.1f}"
                for left, right in ((tl, tr), (bl, br))
                if ok[i, left] and ok[i, right] and kp[i, left, 0] > kp[i, right, 0]
            ]
            if bad:
                issues.append(f"left_right_swapped: {lev}: " + "; ".join(bad))
    corners = list(sch.corner_indices)
    prev_lev, prev_cy = None, None
    for i, lev in enumerate(annotation.levels):
        m = ok[i, corners]
        if not m.any():
            continue
        cy = float(kp[i, corners, 1][m].mean())
        if prev_cy is not None and cy <= prev_cy:
            issues.append(f"centre_out_of_order: {lev}: centre y={cy:.1f} not below {prev_lev} centre y={prev_cy:.1f}")
        prev_lev, prev_cy = lev, cy
    return issues


#: ``meta["label_fix"]`` of an annotation whose vertebra list :func:`fix_rotated_levels` rotated back
LABEL_FIX_ROTATED = "rotated: the file's last vertebra (stored as L5, above its T1) is T1; the file's T1..L4 are T2..L5"


def fix_rotated_levels(keypoints_px: np.ndarray, visible: np.ndarray, max_gap_ratio: float = 2.0) -> np.ndarray | None:
    """The keypoints of a vertebra list stored rotated by one (T1 last), put back in level order; else ``None``.

    Args:
        keypoints_px: ``(V, K, 2)`` points of the file's vertebrae, top to bottom as listed.
        visible: ``(V, K)`` mask.
        max_gap_ratio: the moved vertebra's distance to the next, at most this many median gaps.

    Returns:
        ``(V, K, 2)`` with the last vertebra moved to the front, or ``None`` when the list is in level
        order already or the rotation does not explain its disorder.
    """
    kp = np.asarray(keypoints_px, dtype=np.float64)
    vis = np.asarray(visible, bool) & np.all(np.isfinite(kp), axis=-1)
    if kp.ndim != 3 or kp.shape[0] < 3 or not vis.any(axis=1).all():
        return None
    centres = np.stack([kp[i][vis[i]].mean(0) for i in range(kp.shape[0])])
    if np.all(np.diff(centres[:, 1]) > 0):  # codecs.chain.centres_in_level_order's test (data may not import codecs)
        return None
    rolled = np.roll(centres, 1, axis=0)
    if not np.all(np.diff(rolled[:, 1]) > 0):
        return None
    gaps = np.hypot(*np.diff(rolled, axis=0).T)
    if gaps[0] > max_gap_ratio * np.median(gaps):
        return None
    return np.roll(kp, 1, axis=0)


@dataclass
class AasceDataset:
    """The AASCE annotations of one folder, with their label-noise report.

    Attributes:
        root: the dataset folder.
        annotations: one ``ap``/``ap4`` record per image, in ``filenames.csv`` order.
        report: image file name -> issue strings of :func:`find_label_noise`, only for images
            with at least one issue.
    """

    root: Path
    annotations: list[SpineAnnotation]
    report: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> SpineAnnotation:
        return self.annotations[index]

    def __iter__(self) -> Iterator[SpineAnnotation]:
        return iter(self.annotations)

    @property
    def names(self) -> list[str]:
        """Image file names, in order."""
        return [a.meta["filename"] for a in self.annotations]

    @property
    def keypoints_px(self) -> np.ndarray:
        """(M, 17, 4, 2) float64 array of all keypoints, (x, y) pixels."""
        return np.stack([a.keypoints_px for a in self.annotations]) if self.annotations else np.zeros((0, 17, 4, 2))

    @property
    def cobb_angles_deg(self) -> np.ndarray:
        """(M, 3) Cobb angles in degrees, columns :data:`COBB_ANGLE_NAMES`."""
        return np.asarray([a.meta["cobb_angles_deg"] for a in self.annotations], dtype=np.float64).reshape(-1, 3)

    @property
    def fixed(self) -> list[str]:
        """Image file names whose vertebra list was put back in level order (:func:`fix_rotated_levels`)."""
        return [a.meta["filename"] for a in self.annotations if a.meta.get("label_fix")]

    def count_issues(self, kind: str) -> int:
        """Number of reported issues of one kind (one per vertebra, or per point for the point
        kinds; see :func:`find_label_noise`)."""
        if kind not in LABEL_NOISE_KINDS:
            raise KeyError(f"unknown label-noise kind {kind!r}; known: {LABEL_NOISE_KINDS}")
        return sum(s.startswith(kind + ":") for issues in self.report.values() for s in issues)


def read_aasce(root: str | os.PathLike | None = None, use_mat: bool = False, images_dir: str = "images",
               fix_order: bool = True) -> AasceDataset:
    """Read all AASCE annotations of a folder.

    Args:
        root: the dataset folder (holding ``images/`` and ``labels/``) or a folder holding
            ``aasce-train/``; ``None``: see :func:`resolve_aasce_root`.
        use_mat: take the points from ``labels/<image>.mat`` (``p2``, pixels) instead of
            ``landmarks.csv`` (normalised; the default). Both agree within 0.05 px.
        images_dir: image subfolder name.
        fix_order: put vertebra lists stored rotated by one back in level order (:func:`fix_rotated_levels`;
            ``meta["label_fix"]`` is :data:`LABEL_FIX_ROTATED` on those, ``None`` on the others).

    Returns:
        :class:`AasceDataset`; each annotation has region ``ap``, scheme ``ap4``, levels T1..L5,
        ``image`` (absolute path), ``image_size`` (W, H) from the JPEG header, unknown spacing, and
        ``meta`` = ``{"dataset": "aasce", "filename", "row" (0-based row of the CSVs),
        "label_source" ("landmarks.csv" or "mat"), "cobb_angles_deg" [main, proximal, distal],
        "cobb_angle_names", "label_noise" (issue strings)}``.

    Raises:
        FileNotFoundError: the folder, an image, or (``use_mat``) a ``.mat`` file is missing.
        AasceError: the CSVs disagree in row count or a row is malformed.
    """
    root = resolve_aasce_root(root).resolve()
    labels = root / "labels"
    names = read_aasce_filenames(root)
    angles = read_cobb_angles(root)
    if len(angles) != len(names):
        raise AasceError(f"{labels / 'angles.csv'}: {len(angles)} rows, but filenames.csv has {len(names)}")
    frac = None
    if not use_mat:
        frac = read_aasce_landmarks(root)
        if len(frac) != len(names):
            raise AasceError(f"{labels / 'landmarks.csv'}: {len(frac)} rows, but filenames.csv has {len(names)}")
    region = get_region("ap")
    anns: list[SpineAnnotation] = []
    report: dict[str, list[str]] = {}
    for row, name in enumerate(names):
        image = root / images_dir / name
        size = read_image_size(image)
        if use_mat:
            pts = read_aasce_mat(labels / f"{name}.mat")
        else:
            pts = frac[row] * np.asarray(size, dtype=np.float64)
        kp = pts.reshape(AASCE_NUM_VERTEBRAE, region.scheme.num_points, 2)
        fixed = fix_rotated_levels(kp, np.all(np.isfinite(kp), axis=-1)) if fix_order else None
        if fixed is not None:
            kp = fixed
        ann = SpineAnnotation(
            levels=list(region.levels),
            keypoints_px=kp,
            visible=np.all(np.isfinite(kp), axis=-1),
            region=region.name,
            scheme=region.scheme.name,
            image=str(image),
            image_size=size,
            spacing_mm=None,
            spacing_source="unknown",
            meta={
                "dataset": "aasce",
                "filename": name,
                "row": row,
                "label_source": "mat" if use_mat else "landmarks.csv",
                "cobb_angles_deg": [float(a) for a in angles[row]],
                "cobb_angle_names": list(COBB_ANGLE_NAMES),
                "label_fix": LABEL_FIX_ROTATED if fixed is not None else None,
            },
        )
        issues = find_label_noise(ann)
        ann.meta["label_noise"] = issues
        if issues:
            report[name] = issues
        anns.append(ann)
    return AasceDataset(root=root, annotations=anns, report=report)


# ----------------------------------------------------------------------------------------------
# a seeded split by patient, written as a dataset folder in the project's format
# ----------------------------------------------------------------------------------------------
#: default shares of training, validation and test images
AASCE_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
#: version of the label fixes a written dataset folder holds (a cached folder of an older one is rewritten)
LABEL_FIX_VERSION = 1

_GROUP_RE = re.compile(r"-(\d+)\s*[A-Za-z]?\s*(?:AP\d*)?\.jpe?g$", re.IGNORECASE)


def aasce_group(filename: str) -> str:
    """The patient key of an AASCE image name, so that one patient's images stay in one split.

    Names look like ``sunhl-1th-02-Jan-2017-162 A AP.jpg``: the number before the letter (``162``)
    numbers the patient, the letter (``A``, ``B``, ...) the radiograph (some patients have up to 16,
    taken on different days). Names that do not follow it (``sunhl-1th-20-Jul-2016-coronal1.jpg``)
    are their own group (the file stem).
    """
    m = _GROUP_RE.search(filename)
    return f"patient-{m.group(1)}" if m else f"image-{Path(filename).stem}"


_BATCH_RE = re.compile(r"(\d{1,2})-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-(\d{4})", re.IGNORECASE)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def aasce_batch(filename: str) -> str:
    """The annotation batch of an AASCE image or label name: the year and month of the date in it.

    ``sunhl-1th-20-Jul-2016-10 A AP.jpg`` -> ``"2016-07"``. The set was labelled in batches named by
    date (July and November 2016, December 2016, January 2017), and the batches draw the vertebral
    body's corners differently (see ``bench/aasce.annotation_proportions``). ``"unknown"`` when the
    name holds no such date.
    """
    m = _BATCH_RE.search(Path(str(filename)).name)
    if not m:
        return "unknown"
    return f"{m.group(3)}-{_MONTHS.index(m.group(2).lower()) + 1:02d}"


def split_aasce(
    names: list[str], fractions: tuple[float, float, float] = AASCE_SPLIT_FRACTIONS, seed: int = 0
) -> dict[str, list[str]]:
    """Seeded split of image names into training / validation / test, whole patients at a time.

    Patients (:func:`aasce_group`) are shuffled with ``numpy.random.default_rng(seed)`` (over the sorted
    patient keys) and dealt out in that order: to test until it holds ``round(fractions[2] * n)``
    images, then to validation until ``round(fractions[1] * n)``, the rest to training. A split may
    exceed its target by the last patient's images.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` names, each sorted.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions!r}")
    fr = fr / fr.sum()
    groups: dict[str, list[str]] = {}
    for n in sorted(names):
        groups.setdefault(aasce_group(n), []).append(n)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    n = len(names)
    targets = {"test": int(round(fr[2] * n)), "validation": int(round(fr[1] * n))}
    out: dict[str, list[str]] = {"training": [], "validation": [], "test": []}
    for i in order:
        members = groups[keys[i]]
        for split in ("test", "validation"):
            if len(out[split]) < targets[split]:
                out[split].extend(members)
                break
        else:
            out["training"].extend(members)
    return {k: sorted(v) for k, v in out.items()}


def write_aasce_dataset(
    out_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    fractions: tuple[float, float, float] = AASCE_SPLIT_FRACTIONS,
    seed: int = 0,
    use_mat: bool = False,
) -> Path:
    """Write the AASCE set as a dataset folder of the project's format (images stay where they are).

    ``<out_dir>/labels/<image stem>.json`` is one ``monai-spine-keypoints`` annotation per image (its
    ``image`` is the absolute path of the JPEG in ``root``, spacing unknown, the Cobb angles and label
    noise in ``meta``); ``<out_dir>/dataset.json`` holds ``region: "ap"``, the explicit split of
    :func:`split_aasce` (paths relative to ``out_dir``) and how it was made. The folder works as the
    bundle's ``--dataset_dir`` with ``--region ap``.

    Args:
        out_dir: output folder (outside the repository; created).
        root: the AASCE folder (see :func:`resolve_aasce_root`).
        fractions, seed: the split (see :func:`split_aasce`).
        use_mat: take the points from the ``.mat`` files (see :func:`read_aasce`).

    Returns:
        ``out_dir`` as a path.
    """
    ds = read_aasce(root, use_mat=use_mat)
    out = Path(out_dir)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    label_of: dict[str, str] = {}
    for ann in ds:
        name = ann.meta["filename"]
        rel = f"labels/{Path(name).stem}.json"
        write_annotation(ann, out / rel)
        label_of[name] = rel
    split = split_aasce(ds.names, fractions, seed)
    index = {
        "name": "aasce-train",
        "region": "ap",
        "source": str(ds.root),
        "split_rule": "monai_spine.data.aasce.split_aasce: whole patients, seeded permutation",
        "split_seed": int(seed),
        "split_fractions": [float(f) for f in fractions],
        "label_source": "mat" if use_mat else "landmarks.csv",
        "label_fixes": {"version": LABEL_FIX_VERSION, "rotated_lists_put_back": ds.fixed},
        **{s: [{"label": label_of[n], "image": str(ds.root / "images" / n)} for n in names] for s, names in split.items()},
    }
    atomic_write_text(out / "dataset.json", json.dumps(index, indent=1) + "\n")
    return out


def ensure_aasce_dataset(
    cache_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    fractions: tuple[float, float, float] = AASCE_SPLIT_FRACTIONS,
    seed: int = 0,
) -> Path:
    """:func:`write_aasce_dataset` into ``<cache_dir>/aasce-seed<seed>-<fractions>`` unless it is there.

    A folder written before the current label fixes (:data:`LABEL_FIX_VERSION`) is written again.
    """
    tag = "-".join(f"{f:g}" for f in fractions)
    folder = Path(cache_dir) / f"aasce-seed{seed}-{tag}"
    index = folder / "dataset.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            if (json.load(f).get("label_fixes") or {}).get("version") == LABEL_FIX_VERSION:
                return folder
    return write_aasce_dataset(folder, root, fractions, seed)
