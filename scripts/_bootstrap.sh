# Sourced by scripts/serve and scripts/test: make .venv with Python 3.11 and install Tanso
# (pinned by requirements/constraints.txt) when it is missing or the pins changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${TANSO_VENV:-$ROOT/.venv}"

find_python() {
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  echo "Tanso needs Python 3.11 (python3.11 on PATH)." >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  "$(find_python)" -m venv "$VENV"
fi
# A dev install (tests) also serves; a run install is enough only to serve.
want="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)"
stamp="$VENV/.tanso-install-$1"
if [ "$1" = "run" ] && [ -f "$VENV/.tanso-install-dev" ] && [ "$(cat "$VENV/.tanso-install-dev")" = "$want" ]; then
  stamp="$VENV/.tanso-install-dev"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  extra=""
  [ "$1" = "dev" ] && extra="[dev]"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c requirements/constraints.txt -e ".$extra"
  rm -f "$VENV"/.tanso-install-*
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
