#!/usr/bin/env bash
# Builds the docs site (MkDocs + Material + mkdocstrings, mkdocs.yml) with warnings as errors.
#
#   bash scripts/build_docs.sh          # check only: builds into a temporary folder, removed after
#   bash scripts/build_docs.sh DIR      # keep the site in DIR (site/ is git-ignored)
#
# Installs only the `docs` extra of pyproject.toml into a virtual environment ($DOCS_VENV,
# default ./.venv-docs, created if missing), not the package: `pip install ".[docs]"` would build
# the C++ extension, and the API reference needs neither it nor MindSpore (mkdocstrings reads
# src/ by static analysis). MSACCUM_DOCS_NO_INSTALL=1 skips the install (an environment that
# already has the docs requirements).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DOCS_VENV="${DOCS_VENV:-$PWD/.venv-docs}"
if [ "$#" -gt 0 ]; then
  SITE_DIR="$1"
else
  SITE_DIR="$(mktemp -d)"
  trap 'rm -rf "$SITE_DIR"' EXIT
fi

if [ ! -x "$DOCS_VENV/bin/python" ]; then
  echo "== creating virtual environment $DOCS_VENV"
  "$PYTHON" -m venv "$DOCS_VENV"
fi
if [ "${MSACCUM_DOCS_NO_INSTALL:-0}" != 1 ]; then
  # The requirements are read from pyproject.toml, the one place they are written.
  mapfile -t REQUIREMENTS < <("$DOCS_VENV/bin/python" - <<'PY'
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    sys.exit("scripts/build_docs.sh needs Python >= 3.11 (tomllib) to read pyproject.toml")
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["docs"]))
PY
)
  [ "${#REQUIREMENTS[@]}" -gt 0 ] || { echo "no docs requirements read from pyproject.toml" >&2; exit 1; }
  echo "== installing the docs requirements: ${REQUIREMENTS[*]}"
  "$DOCS_VENV/bin/python" -m pip install --quiet "${REQUIREMENTS[@]}"
fi
echo "== mkdocs build --strict"
# NO_MKDOCS_2_WARNING: Material's banner about its successor is printed on every build otherwise.
NO_MKDOCS_2_WARNING=1 "$DOCS_VENV/bin/mkdocs" build --strict --site-dir "$SITE_DIR"
echo "== docs built in $SITE_DIR$([ "$#" -gt 0 ] || echo ' (temporary, removed now)')"
