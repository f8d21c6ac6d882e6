#!/usr/bin/env bash
# The helper's suite on every CPython from 3.9 to 3.13 this machine has (`make pythons`).
#
# For each version: the first interpreter that answers with that version among pyenv's
# builds ($PYENV_ROOT/versions/3.X*, default ~/.pyenv) and python3.X on PATH. Each gets
# its own venv (.venv-py3X: numpy, pytest, hypothesis, execnet, xarray), runs python-helper's
# tests, and then the Rust channel and array batteries with it as the worker. A version
# the machine lacks is named as not run; the run fails if any version that ran failed.
set -u
cd "$(dirname "$0")/.."
versions=${PIXGATE_MATRIX_VERSIONS:-"3.9 3.10 3.11 3.12 3.13"}
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
ran=() absent=() failed=()

find_python() {
  local v=$1 p
  for p in "$pyenv_root"/versions/"$v".*/bin/python"$v" "$(command -v python"$v" 2>/dev/null)"; do
    [ -n "$p" ] && [ -x "$p" ] || continue
    if "$p" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

for v in $versions; do
  if ! py=$(find_python "$v"); then
    echo "pythons: CPython $v NOT RUN: no interpreter found (pyenv or python$v on PATH)"
    absent+=("$v")
    continue
  fi
  venv=".venv-py${v/./}"
  echo "pythons: CPython $v: $py ($venv)"
  if ! { [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"; } ||
     ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
         --only-binary numpy numpy pytest hypothesis execnet xarray; then
    echo "pythons: CPython $v: FAILED to set up $venv"
    failed+=("$v")
    continue
  fi
  vpy=$PWD/$venv/bin/python
  if (cd python-helper && timeout 900 "$vpy" -m pytest -q -p no:cacheprovider tests) &&
     PIXGATE_PYTHON=$vpy timeout 900 cargo test -q --test channels --test arrays --test references; then
    ran+=("$v ($("$vpy" -c 'import platform, numpy; print(platform.python_version(), "numpy", numpy.__version__)'))")
  else
    echo "pythons: CPython $v: FAILED"
    failed+=("$v")
  fi
done

echo "pythons: passed on: ${ran[*]:-none}"
echo "pythons: not run (absent): ${absent[*]:-none}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "pythons: FAILED on: ${failed[*]}"
  exit 1
fi
