#!/usr/bin/env bash
# The Python package's checks: ruff, mypy --strict and pytest against the real scale0
# binary (SCALE0_BIN, default target/debug/scale0, which `cargo test` builds first).
# Installs pytest, ruff, mypy, gevent and the package itself (`pip install ./python`)
# into the venv scripts/test.sh uses (scripts/venv.sh), creating it when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh
ensure_venv scripts/test-python.sh
py="$venv/bin/python"
pip=("$py" -m pip install --quiet --disable-pip-version-check)
if ! "$py" -c 'import zmq, pytest, gevent, mypy, ruff' >/dev/null 2>&1; then
  echo "scripts/test-python.sh: installing pyzmq, pytest, ruff, mypy and gevent into $venv" >&2
  "${pip[@]}" 'pyzmq>=26,<28' pytest ruff mypy gevent
fi
# The package as a user installs it (not the source tree on sys.path). With a recent
# enough setuptools in the venv, build with it (no download of a build environment).
isolation=()
# (setuptools before 70.1 builds wheels only with the `wheel` package beside it.)
probe='import importlib.util as u, setuptools as s, sys
v = tuple(int(x) for x in s.__version__.split(".")[:2])
sys.exit(not (v >= (61, 0) and (v >= (70, 1) or u.find_spec("wheel"))))'
if "$py" -c "$probe" >/dev/null 2>&1; then
  isolation=(--no-build-isolation)
fi
"${pip[@]}" --no-deps --force-reinstall "${isolation[@]}" ./python
rm -rf python/build python/scale0.egg-info

export SCALE0_BIN="${SCALE0_BIN:-$PWD/target/debug/scale0}"
echo "== python: ruff"
"$py" -m ruff check python
"$py" -m ruff format --check python
echo "== python: mypy --strict"
(cd python && "../$py" -m mypy --strict scale0 tests)
echo "== python: pytest (SCALE0_BIN=$SCALE0_BIN)"
# pytest itself, not `python -m pytest`, which would put the source tree on sys.path.
(cd python && "../$venv/bin/pytest" -q tests)
