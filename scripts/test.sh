#!/usr/bin/env bash
# Run the test suite: first the lint, format and type checks (ruff check, ruff format --check,
# mypy through scripts/typecheck.py; the run stops at the first that fails, saying how to fix
# it), then the unit and integration tests (integration ones need openssl; later ones start
# their own dockerd/registry). Extra arguments go to pytest.
#
# As root with apt-get, first installs the missing packages of scripts/system-packages.txt
# (quietly; nothing when all are installed). Otherwise the tests that need them skip, and the
# last lines of the output say what did not run and why. The exit code is pytest's (1 when a
# check failed and no test ran).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mapfile -t _packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' scripts/system-packages.txt)
_missing=()
for _p in "${_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$_p" 2>/dev/null | grep -q "install ok installed" || _missing+=("$_p")
done
_not_installed=""
if [ "${#_missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing system packages: ${_missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${_missing[@]}" \
             >/dev/null; }; then
      _not_installed="not installed (apt-get failed, see above): ${_missing[*]}"
    fi
  elif ! command -v apt-get >/dev/null; then
    _not_installed="not installed (no apt-get here): ${_missing[*]}"
  else
    _not_installed="not installed (needs root): ${_missing[*]}; as root, scripts/test.sh installs them (or: sudo apt-get install ${_missing[*]})"
  fi
fi

source scripts/venv.sh

# Lint, format and types before any test: each names itself and the command that fixes it.
_check() {
  local what="$1" fix="$2"; shift 2
  if ! "$@"; then
    echo "scripts/test.sh: $what failed (\`$*\`); fix: $fix" >&2
    exit 1
  fi
}
_check "lint" "ruff check --fix . (then fix what it cannot by hand)" ruff check --quiet .
_check "format check" "ruff format ." ruff format --check .
_check "type check" "fix the errors listed above" python scripts/typecheck.py

_report="$(mktemp -t enclave-build-tests.XXXXXX.xml)"
trap 'rm -f "$_report"' EXIT
set +e
python -m pytest -q -rs --junitxml="$_report" "$@"
_rc=$?
set -e

# What did not run, grouped by reason, as the last lines (pytest's skip lines scroll away).
python - "$_report" "$_not_installed" <<'PY' || true
import collections, sys, xml.etree.ElementTree as ET

report, not_installed = sys.argv[1], sys.argv[2]
reasons = collections.Counter()
counts = None
try:
    root = ET.parse(report).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is not None:
        total, skips = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        counts = (total - skips - failed, failed, skips)
    for case in root.iter("testcase"):
        for skipped in case.findall("skipped"):
            if skipped.get("type") != "pytest.xfail":
                reasons[(skipped.get("message") or "no reason given")] += 1
except (OSError, ET.ParseError):
    pass  # pytest stopped before writing it (a usage error): its own output says why
if counts is None and not reasons and not not_installed:
    sys.exit(0)
print()
if counts is not None and not reasons:
    print("scripts/test.sh: every selected test ran on this machine (none skipped)")
if reasons:
    print(f"scripts/test.sh: {sum(reasons.values())} test(s) did not run on this machine:")
    for message, count in reasons.most_common():
        print(f"  {count:4d}  {message}")
if not_installed:
    print(f"scripts/test.sh: system packages {not_installed}")
if counts is not None:  # the totals again, as the last line (pytest's scrolled up)
    print("{} passed, {} failed, {} skipped".format(*counts))
PY
exit "$_rc"
