# Shared set-up of .ci/dashboard and .ci/test — sourced by them, not run on its own.
#
# lrviz_venv: a virtual environment in .venv (override with LRVIZ_VENV) holding requirements.txt and
# lrviz itself (editable), created on first use and reused afterwards: the hash of requirements.txt
# and pyproject.toml is kept in $VENV/.lrviz-setup, and pip runs again only when it changes (or the
# stamp is missing). Then the environment is put first on PATH. Needs Python 3.10+ (PYTHON, default
# python3) with its venv module, and the package registry the first time.

lrviz_venv() {
  local py="${PYTHON:-python3}" venv="${LRVIZ_VENV:-.venv}"
  local stamp="$venv/.lrviz-setup" want
  want="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$venv/bin/python" ]; then
    if ! command -v "$py" >/dev/null 2>&1; then
      echo "error: $py not found; install Python 3.10 or newer (Debian: apt-get install python3 python3-venv)" >&2
      return 1
    fi
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      echo "error: lrviz needs Python 3.10 or newer; $py is $("$py" -V 2>&1). Set PYTHON=python3.11 (or similar)" >&2
      return 1
    fi
    echo "setting up $venv (first use)..." >&2
    if ! "$py" -m venv "$venv"; then
      echo "error: could not create $venv with $py (Debian: apt-get install python3-venv)" >&2
      return 1
    fi
  fi
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "installing requirements.txt and lrviz into $venv (first use, or the requirements changed)..." >&2
    "$venv/bin/python" -m pip install -q -r requirements.txt
    # lrviz itself, editable; skipped when this checkout is installed already (no build step needed then)
    if ! (cd / && "$venv/bin/python" -c 'import lrviz, sys; sys.exit(not lrviz.__file__.startswith(sys.argv[1]))' \
          "$(pwd)/lrviz/") >/dev/null 2>&1; then
      "$venv/bin/python" -m pip install -q --no-deps -e .
    fi
    echo "$want" > "$stamp"
  fi
  VIRTUAL_ENV="$(cd "$venv" && pwd)"
  export VIRTUAL_ENV
  export PATH="$VIRTUAL_ENV/bin:$PATH"
  # OpenMP threads that spin while waiting slow torch down 5-10x on a shared 2-core machine
  export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
}
