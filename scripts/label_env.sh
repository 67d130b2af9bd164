#!/usr/bin/env bash
# Create the MONAI Label 0.8.5 virtual environment (.venv-label) used by monai_spine/apps/label.
#
# MONAI Label cannot share the main .venv: installed there it replaces the CPU torch with a CUDA
# build and drops numpy to 1.x (see ../shared/notes/environment.md, "MONAI Label 0.8.5").
# Here torch is pinned to the CPU wheel 2.13.0 by a constraint file, monai==1.6.1 and
# monailabel==0.8.5 are installed under it, then what monai_spine needs at run time (with numpy
# kept at the version MONAI Label chose), then monai_spine itself with --no-deps.
#
# Usage: scripts/label_env.sh [VENV_DIR]        (default: .venv-label, or $LABEL_VENV)
# Idempotent: a stamp file VENV_DIR/.monai-spine-label-installed records a finished install;
# delete it (or the folder) to rebuild. Takes 5-20 minutes on 2 cores the first time (17 measured on
# a busy machine), seconds afterwards.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${LABEL_VENV:-$ROOT/.venv-label}}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.monai-spine-label-installed"
STAMP_VERSION="monailabel==0.8.5 monai==1.6.1 torch==2.13.0 v1"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_VERSION" && -x "$VENV/bin/monailabel" ]]; then
    echo "label_env: $VENV is ready"
    exit 0
fi

echo "label_env: building $VENV (5-20 minutes)"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
CONSTRAINTS="$VENV/label-constraints.txt"
echo "torch==2.13.0" > "$CONSTRAINTS"

"${PIP[@]}" install -q torch==2.13.0
PIP_CONSTRAINT="$CONSTRAINTS" SAM2_BUILD_CUDA=0 "${PIP[@]}" install -q monai==1.6.1 monailabel==0.8.5
# pydicom-seg (a monailabel dependency) needs pydicom 2; monai_spine's DICOM reader runs under
# pydicom 2 through monai_spine.apps.label.lib.compat (pydicom.pixels shim).
PIP_CONSTRAINT="$CONSTRAINTS" "${PIP[@]}" install -q "pydicom<3" "pynetdicom<3" "dicomweb-client[gcp]>=0.59.1,<0.60"

# Keep numpy (and pydicom) where MONAI Label put them while adding monai_spine's run-time needs.
"$VENV/bin/python" - "$CONSTRAINTS" <<'PY'
import sys
from importlib.metadata import version
with open(sys.argv[1], "a") as f:
    for name in ("numpy", "pydicom"):
        f.write(f"{name}=={version(name)}\n")
PY
PIP_CONSTRAINT="$CONSTRAINTS" "${PIP[@]}" install -q scipy opencv-python-headless scikit-image \
    matplotlib "pytorch-ignite>=0.5" tqdm fire nibabel SimpleITK pillow
"${PIP[@]}" install -q --no-deps -e "$ROOT"

"$VENV/bin/python" -c "import monailabel, monai, torch, numpy, pydicom; print('label_env: monailabel', monailabel.__version__, 'monai', monai.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__, 'pydicom', pydicom.__version__)"
echo "$STAMP_VERSION" > "$STAMP"
echo "label_env: $VENV ready"
