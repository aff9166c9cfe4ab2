#!/usr/bin/env bash
# Create (idempotently) the venv that serves Infinity for `bench/serving.py` variant (e).
#
# Infinity pins older transformers / numpy than the gateway, so it lives in its own venv
# under cache/ (gitignored). torch==2.13.0 goes in first: here that resolves to the CPU
# build on local disk; a bare `torch` requirement would pull a multi-GB CUDA build.
#
#   bash bench/setup_infinity.sh            # prints the venv path on success
#   INFINITY_VENV=/some/dir bash bench/setup_infinity.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INFINITY_VENV:-$ROOT/cache/infinity-venv}"
PYTHON="${PYTHON:-python3}"
INFINITY_VERSION="${INFINITY_VERSION:-0.0.78}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
STAMP="$VENV/.installed-infinity-$INFINITY_VERSION-torch-$TORCH_VERSION"

if [[ -f "$STAMP" && -x "$VENV/bin/infinity_emb" ]]; then
    echo "$VENV"
    exit 0
fi

echo "setting up Infinity $INFINITY_VERSION in $VENV (log: $VENV.log)" >&2
mkdir -p "$(dirname "$VENV")"
{
    test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
    # server: the `infinity_emb v2` CLI (fastapi, uvicorn, typer, ...); torch: the
    # sentence-transformers backend. No optimum: we run with --no-bettertransformer.
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" "infinity-emb[server,torch]==$INFINITY_VERSION"
    "$VENV/bin/python" -c "import infinity_emb, torch; print('infinity', infinity_emb.__version__, 'torch', torch.__version__)"
} >"$VENV.log" 2>&1 || {
    echo "Infinity setup failed; last lines of $VENV.log:" >&2
    tail -n 20 "$VENV.log" >&2
    exit 1
}
touch "$STAMP"
echo "$VENV"
