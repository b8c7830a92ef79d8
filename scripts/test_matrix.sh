#!/usr/bin/env bash
# Runs the test suite against several MindSpore releases, each in its own virtual environment
# under .matrix/<version> (git-ignored, kept between runs: a second run only reinstalls this
# package). The package is built once as a wheel (.matrix/wheel) and installed with its test
# extras and `mindspore==<version>` pinned into every environment.
#
#   bash scripts/test_matrix.sh                                   # every release, whole suite
#   MSACCUM_MS_VERSIONS="2.7.0 2.10.0" bash scripts/test_matrix.sh tests/cell/test_cell.py -k graph
#
# Arguments go to pytest (files, -k, -x, ...). Environment: MSACCUM_MS_VERSIONS (default: the
# releases below), PYTHON (the interpreter the venvs are made from, default python3),
# MATRIX_DIR (default ./.matrix), MSACCUM_MATRIX_WHEEL (use this wheel instead of building one).
# Prints one table row per version: passed/failed/errors/skipped and the wall time of the
# install and of the tests. Exits non-zero if any version failed to install or had a failing test.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR="$PWD"
VERSIONS="${MSACCUM_MS_VERSIONS:-2.7.0 2.7.1 2.7.2 2.8.0 2.9.0 2.10.0}"
PYTHON="${PYTHON:-python3}"
MATRIX_DIR="${MATRIX_DIR:-$ROOT_DIR/.matrix}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$MATRIX_DIR"
# the commit tested, read now (the table is printed at the end, when HEAD may have moved)
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+dirty')"

if [ -n "${MSACCUM_MATRIX_WHEEL:-}" ]; then
  WHEEL="$(realpath "$MSACCUM_MATRIX_WHEEL")"
else
  echo "== building the wheel once"
  rm -rf "$MATRIX_DIR/wheel"
  t0=$(date +%s)
  if ! "$PYTHON" -m pip wheel --quiet --no-deps . -w "$MATRIX_DIR/wheel"; then
    echo "test_matrix: building the wheel failed" >&2
    exit 2
  fi
  WHEEL="$(ls "$MATRIX_DIR"/wheel/mindspore_accum-*.whl)"
  echo "   $(basename "$WHEEL") in $(( $(date +%s) - t0 )) s"
fi

# Requires-Dist of the wheel for the test extra (and unconditional ones), without mindspore.
mapfile -t TEST_DEPS < <("$PYTHON" - "$WHEEL" <<'PY'
import re, sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
for line in wheel.read(metadata).decode().splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    requirement, _, marker = line.split(":", 1)[1].partition(";")
    requirement = requirement.strip().replace(" ", "")
    if marker.strip() and not re.search(r"extra\s*==\s*['\"]test['\"]", marker):
        continue
    if re.match(r"mindspore([^A-Za-z0-9_.-]|$)", requirement, re.I):
        continue
    print(requirement)
PY
)
echo "== test dependencies: ${TEST_DEPS[*]} (+ mindspore==<version>)"

rows=()
status=0
for v in $VERSIONS; do
  venv="$MATRIX_DIR/$v"
  log="$MATRIX_DIR/$v.log"
  echo "== MindSpore $v ($venv, log $log)"
  t0=$(date +%s)
  {
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip &&
    # The test extra's requirements less MindSpore, which is pinned to $v: a release below the
    # package's `mindspore>=` bound can be tested too (to find out whether the bound can move).
    "$venv/bin/python" -m pip install --quiet "${TEST_DEPS[@]}" "mindspore==$v" &&
    # same version number as an earlier build: force this wheel in (its dependencies are in place)
    "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$WHEEL"
  } >"$log" 2>&1
  install_rc=$?
  t_install=$(( $(date +%s) - t0 ))
  installed="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("mindspore"))' 2>/dev/null)"
  if [ $install_rc -ne 0 ] || [ "$installed" != "$v" ]; then
    echo "   install failed (mindspore installed: ${installed:-none}); see $log"
    tail -5 "$log" | sed 's/^/   | /'
    rows+=("$(printf '| %-7s | %6s | %6s | %6s | %7s | %7s | %5s | %s |' "$v" - - - - "${t_install} s" - "install failed")")
    status=1
    continue
  fi
  t0=$(date +%s)
  # The pytest entry point (not python -m pytest) keeps the source folder off sys.path, so the
  # tests import the installed wheel.
  "$venv/bin/pytest" -q -p no:cacheprovider --junitxml="$MATRIX_DIR/$v.junit.xml" "$@" >>"$log" 2>&1
  rc=$?
  t_test=$(( $(date +%s) - t0 ))
  counts="$("$venv/bin/python" - "$MATRIX_DIR/$v.junit.xml" <<'PY' 2>/dev/null
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print(n["tests"] - n["failures"] - n["errors"] - n["skipped"], n["failures"], n["errors"], n["skipped"])
PY
)"
  read -r passed failed errors skipped <<<"${counts:-? ? ? ?}"
  case $rc in
    0) result="ok" ;;
    1) result="tests failed"; status=1 ;;
    5) result="no tests collected" ;;
    *) result="pytest exit $rc"; status=1 ;;
  esac
  echo "   $passed passed, $failed failed, $errors errors, $skipped skipped in ${t_test} s ($result)"
  grep -E '^(FAILED|ERROR) ' "$log" | head -20 | sed 's/^/   | /'
  rows+=("$(printf '| %-7s | %6s | %6s | %6s | %7s | %7s | %5s | %s |' "$v" "$passed" "$failed" "$errors" "$skipped" "${t_install} s" "${t_test} s" "$result")")
done

echo
echo "MindSpore test matrix: commit $COMMIT, pytest args: ${*:-(whole suite)}"
echo "| MindSpore | passed | failed | errors | skipped | install | tests | result |"
echo "|---|--:|--:|--:|--:|--:|--:|---|"
for row in "${rows[@]}"; do echo "$row"; done
exit $status
