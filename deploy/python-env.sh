#!/usr/bin/env bash
# deploy/python-env.sh [REQUIREMENT...]
#
# Creates (or reuses) the project's Python virtual environment, .venv in the repository root, and
# pip-installs the given requirements into it (names, 'name==version', or '-r file', as pip takes them).
# Prints the venv's python path as the last line of stdout, so callers can do
#   PY=$(./deploy/python-env.sh numpy | tail -n1)
# Everything else goes to stderr. Set STARATTN_VENV to use another folder.
set -euo pipefail

die() { echo "python-env.sh: error: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${STARATTN_VENV:-$repo/.venv}
python=${PYTHON:-python3}

command -v "$python" >/dev/null || die "'$python' not found; run deploy/install-deps.sh (python3, python3-venv)"

# A venv whose interpreter is gone (e.g. the system python was upgraded) is rebuilt, not reused.
if [ -d "$venv" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "python-env.sh: $venv is broken; recreating it" >&2
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "python-env.sh: creating $venv" >&2
  "$python" -m venv "$venv" >&2 ||
    die "'$python -m venv' failed; on Debian/Ubuntu install python3-venv (deploy/install-deps.sh)"
fi

if [ $# -gt 0 ]; then
  # pip skips requirements that are already satisfied, so a reused venv costs seconds.
  echo "python-env.sh: pip install $*" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2 ||
    die "pip install $* failed (see above)"
fi

echo "$venv/bin/python"
