# Sourced by scripts/demo, scripts/test and scripts/bench: make .venv and install Corral into it.
# Idempotent: a stamp of pyproject.toml's hash skips the install when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

_find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "corral: Python 3.11 or newer is needed; install it (e.g. apt-get install python3.11 python3.11-venv)" >&2
  return 1
}

_pip() {
  # Quiet on success; on failure show pip's output, less the local mirrors' one-line
  # notes about packages they do not hold.
  local log rc=0
  log="$(mktemp)"
  "$PY" -m pip install --quiet --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    grep -v -e "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    echo "corral: pip install $* failed (exit $rc)" >&2
  fi
  rm -f "$log"
  return "$rc"
}

bootstrap() {
  local extras="${1:-agent,registry,trainer,dev}"
  local stamp="$VENV/.corral-stamp"
  local want
  want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$extras"
  if [ -x "$PY" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  local base
  base="$(_find_python)"
  if [ ! -x "$PY" ]; then
    echo "corral: creating virtual environment in $VENV" >&2
    "$base" -m venv "$VENV"
  fi
  echo "corral: installing corral[$extras] into $VENV (first run takes a few minutes)" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  # torch is pinned in the trainer extra; installing it first by exact version keeps pip
  # from ever resolving a multi-GB CUDA build on CPU machines.
  if [[ "$extras" == *trainer* ]]; then
    _pip install "torch==2.13.0"
  fi
  _pip install -e "$ROOT[$extras]"
  if [[ "$extras" == *trainer* ]]; then
    # animal-mnist declares TensorFlow; we only read its data files.
    _pip install --no-deps "animal-mnist==0.4"
  fi
  echo "$want" >"$stamp"
}
