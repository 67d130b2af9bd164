#!/usr/bin/env bash
# Create (or reuse) .venv-deploy: the MONAI Deploy App SDK 4.0.0 environment of
# monai_spine.apps.deploy (docs/deploy.md). The SDK lives in its own venv so that the main .venv
# never needs it (with the SDK installed, `import monai` loads Holoscan and needs highdicom).
#
# Usage: scripts/deploy_env.sh [VENV_DIR]      (default <repo>/.venv-deploy, or $DEPLOY_VENV)
#        PYTHON=python3.11 scripts/deploy_env.sh (interpreter for a new venv; default python3)
#
# The requirements are monai_spine/apps/deploy/requirements-map.txt (the packaged app uses the
# same file). Idempotent: a stamp file in the venv records a hash of that file; when it matches,
# nothing is installed but the project itself (editable, no dependencies, a few seconds).
# torch==2.13.0 goes in first and stays pinned (a constraint), so nothing pulls a CUDA build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${DEPLOY_VENV:-$ROOT/.venv-deploy}}"
PYTHON="${PYTHON:-python3}"
REQS="$ROOT/monai_spine/apps/deploy/requirements-map.txt"
STAMP="$VENV/.monai-spine-deploy-installed"
TORCH="$(grep -E '^torch==' "$REQS")"

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "deploy_env: $VENV is up to date (requirements $want)"
else
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "deploy_env: creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
  else
    echo "deploy_env: $VENV exists but its requirements changed or were never installed: installing"
  fi
  PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  echo "deploy_env: installing $TORCH first (CPU wheel)"
  "${PIP[@]}" "$TORCH"
  echo "$TORCH" > "$VENV/constraints.txt"
  echo "deploy_env: installing $(grep -vE '^\s*(#|$)' "$REQS" | grep -v '^torch==' | tr '\n' ' ')"
  "${PIP[@]}" --constraint "$VENV/constraints.txt" -r "$REQS"
  echo "$want" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
fi

echo "deploy_env: pip install --no-deps -e $ROOT"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

found = []
for name in ("torch", "monai", "monai-deploy-app-sdk", "holoscan-cu13", "pydicom", "highdicom"):
    try:
        found.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        found.append(f"{name} MISSING")
print("deploy_env: ready:", ", ".join(found))
PY
