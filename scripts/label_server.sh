#!/usr/bin/env bash
# Start the monai-spine MONAI Label server (monai_spine/apps/label) on a studies folder.
#
# Usage: scripts/label_server.sh [STUDIES_DIR] [PORT] [HOST] [-- extra monailabel start_server args]
#   STUDIES_DIR  radiographs (DICOM .dcm, PNG, JPEG); default $MONAI_SPINE_STUDIES or ./studies
#   PORT         default $MONAI_SPINE_LABEL_PORT or 8765
#   HOST         default $MONAI_SPINE_LABEL_HOST or 127.0.0.1 (this machine only; give 0.0.0.0 to
#                listen on every interface, e.g. for annotators on other machines: see docs/label.md)
#   Models: $MONAI_SPINE_LABEL_MODELS, passed as --conf models DIR when set; otherwise the app serves the
#           model zoo ($MONAI_SPINE_MODELS or bundle/models, <region>/<kind>/; pick the region with
#           "-- --conf region ap|cervical|lumbar").
#   Extra arguments after "--" go to `monailabel start_server` (e.g. --conf mc_samples 20).
# Creates .venv-label (scripts/label_env.sh, 5-20 minutes) when missing. Starts the server in the
# background in its own process group, prints its PID and log file, waits until GET /info/ answers;
# stop it with `kill -- -PID` (the group: the server and its training/scoring subprocesses).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LABEL_VENV:-$ROOT/.venv-label}"
STUDIES="${MONAI_SPINE_STUDIES:-$PWD/studies}"
PORT="${MONAI_SPINE_LABEL_PORT:-8765}"
HOST="${MONAI_SPINE_LABEL_HOST:-127.0.0.1}"
MODELS="${MONAI_SPINE_LABEL_MODELS:-}"
pos=()
extra=()
while [[ $# -gt 0 ]]; do
    if [[ "$1" == "--" ]]; then shift; extra=("$@"); break; fi
    pos+=("$1"); shift
done
[[ ${#pos[@]} -ge 1 ]] && STUDIES="${pos[0]}"
[[ ${#pos[@]} -ge 2 ]] && PORT="${pos[1]}"
[[ ${#pos[@]} -ge 3 ]] && HOST="${pos[2]}"

"$ROOT/scripts/label_env.sh" "$VENV"

mkdir -p "$STUDIES"
STUDIES="$(cd "$STUDIES" && pwd)"
LOG="${MONAI_SPINE_LABEL_LOG:-$STUDIES/.monai-spine-label-server.log}"
if [[ "$HOST" != "127.0.0.1" && "$HOST" != "localhost" && "$HOST" != "::1" ]]; then
    echo "label_server: WARNING: listening on $HOST: MONAI Label has no authentication by default;" \
         "anyone who reaches this port can read and change the studies (see docs/label.md)" >&2
fi
cd "$ROOT"
# the monailabel launcher runs `python` from PATH
export PATH="$VENV/bin:$PATH" MONAILABEL_PYEXE="$VENV/bin/python"
models_conf=()
[[ -n "$MODELS" ]] && models_conf=(--conf models "$MODELS")
setsid nohup "$VENV/bin/monailabel" start_server --app "$ROOT/monai_spine/apps/label" --studies "$STUDIES" \
    --host "$HOST" --port "$PORT" "${models_conf[@]}" "${extra[@]}" > "$LOG" 2>&1 &
PID=$!
echo "label_server: PID $PID, http://$HOST:$PORT/ (log: $LOG)"
echo "label_server: stop it with: kill -- -$PID   (its process group: the server and any training/scoring subprocess)"
for _ in $(seq 1 120); do
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "label_server: the server exited; last lines of $LOG:" >&2
        tail -n 20 "$LOG" >&2
        exit 1
    fi
    if "$VENV/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "http://$HOST:$PORT/info/" 2>/dev/null; then
        echo "label_server: ready"
        echo "$PID"
        exit 0
    fi
    sleep 1
done
echo "label_server: not answering after 120 s (PID $PID still running; see $LOG)" >&2
echo "$PID"
exit 1
