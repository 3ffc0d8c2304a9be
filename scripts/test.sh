#!/usr/bin/env bash
# The whole test suite. Installs what the tests need first: pyzmq, in a venv under
# target/ (Debian's system python3 refuses a plain `pip install`; a venv works anywhere),
# Perl's ZMQ::FFI from Debian (libzmq-ffi-perl) for the Perl examples, and Debian's
# chromium and chromium-driver for the dashboard's browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh
ensure_venv scripts/test.sh
if ! "$venv/bin/python" -c 'import zmq, majortomo' >/dev/null 2>&1; then
  echo "scripts/test.sh: installing pyzmq and majortomo into $venv" >&2
  # majortomo (MDP/0.2 from PyPI, a peer nobody here wrote) imports six without declaring it.
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'pyzmq>=26,<28' \
    'majortomo==0.2.0' six
fi
export SCALE0_PYTHON="$PWD/$venv/bin/python"

if ! perl -MZMQ::FFI -e 1 >/dev/null 2>&1; then
  echo "scripts/test.sh: installing Debian's libzmq-ffi-perl" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q && $sudo apt-get install -y -q libzmq-ffi-perl || {
    echo "scripts/test.sh: could not install libzmq-ffi-perl; the Perl tests will fail" >&2
  }
fi

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "scripts/test.sh: installing Debian's chromium and chromium-driver (the dashboard's browser tests)" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q && $sudo apt-get install -y -q chromium chromium-driver || {
    echo "scripts/test.sh: could not install chromium; the browser tests will fail under CI=true, and say they skipped otherwise" >&2
  }
fi

cargo test --workspace "$@"
bash scripts/test-python.sh
