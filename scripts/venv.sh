# Sourced by scripts/test.sh and scripts/test-python.sh: the Python venv under target/
# that both use (Debian's system python3 refuses a plain `pip install`; a venv works
# anywhere). `ensure_venv NAME` creates it when it is missing; NAME prefixes messages.
venv=target/pyenv

ensure_venv() {
  if [ -x "$venv/bin/python" ]; then
    return 0
  fi
  echo "$1: creating the Python venv $venv" >&2
  mkdir -p target
  python3 -m venv "$venv" || {
    echo "$1: 'python3 -m venv' failed; on Debian install python3-venv" >&2
    exit 1
  }
}
