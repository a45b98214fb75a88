# Source this: creates (once) and activates .venv with enclave-build and its test tools.
# A project venv because Debian 12's system Python refuses `pip install` (PEP 668).
# The work runs in a subshell with `set -euo pipefail`, so sourcing this from an interactive
# shell changes none of its options and a failure returns 1 instead of closing that shell.
_eb_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_eb_venv_setup() (
  set -euo pipefail
  _repo="$1"
  if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else
      echo "python3-venv is missing: sudo apt-get install python3-venv" >&2; exit 1
    fi
  fi
  if [ ! -x "$_repo/.venv/bin/python" ]; then
    echo "scripts/venv.sh: creating $_repo/.venv (once)" >&2
    python3 -m venv "$_repo/.venv"
  fi
  _stamp="$_repo/.venv/.installed-$(cat "$_repo/pyproject.toml" "$_repo/constraints.txt" | sha256sum | cut -c1-16)"
  if [ ! -f "$_stamp" ]; then
    echo "scripts/venv.sh: installing enclave-build and its pinned dependencies into $_repo/.venv (first run: a minute or two)" >&2
    "$_repo/.venv/bin/python" -m pip install --quiet --upgrade pip
    # pip's own progress, one line per package (a bar would not show in a log or a pipe).
    # PYTHONWARNINGS hides only setuptools' "Editable installation" notice (a block of
    # asterisks about folders named like the package, which is what an editable install is).
    PYTHONWARNINGS="ignore:Editable installation" \
      "$_repo/.venv/bin/python" -m pip install --progress-bar off -c "$_repo/constraints.txt" -e "$_repo[test,serve]" \
      | { grep --line-buffered -E '^(Collecting|Processing|Installing|Successfully)' >&2 || true; }
    rm -f "$_repo"/.venv/.installed-*
    touch "$_stamp"
  fi
)
if _eb_venv_setup "$_eb_repo"; then
  # shellcheck disable=SC1091
  source "$_eb_repo/.venv/bin/activate"
  unset -f _eb_venv_setup; unset _eb_repo
else
  echo "scripts/venv.sh: setting up $_eb_repo/.venv failed (see above)" >&2
  unset -f _eb_venv_setup; unset _eb_repo
  return 1 2>/dev/null || exit 1
fi
