#!/usr/bin/env bash
# Automatic mutation testing (cosmic-ray) of the code in tools/cosmic-ray.toml, in a throwaway clone so
# the working tree is never touched (cosmic-ray mutates files in place; a run cut short leaves a
# mutant in the clone's files). Not part of CI: about an hour on 2 cores. Prints cr-report's list of surviving mutants; docs/testing.md summarises the last run.
#   bash tools/cosmic_ray.sh [WORKDIR [CONFIG]]    (CONFIG: tools/cosmic-ray.toml, the techniques; or
#   tools/cosmic-ray-steps.toml, -mnist.toml, -gaussian.toml: the schedule and the backends)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
config="${2:-tools/cosmic-ray.toml}"
git clone -q "$root" "$work/repo"
cp "$root"/tools/cosmic-ray*.toml "$root"/tools/cr_scope.py "$work/repo/tools/"   # as they are now
[ -e "$root/../shared" ] && ln -sfn "$(cd "$root/../shared" && pwd)" "$work/shared"
cd "$work/repo"
python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e '.[test]' cosmic-ray==8.7.0
export PATH="$PWD/.venv/bin:$PATH"
cosmic-ray init "$config" session.sqlite
python tools/cr_scope.py "$config" session.sqlite   # the math only
cosmic-ray baseline "$config"
cosmic-ray exec "$config" session.sqlite
cr-report --show-pending session.sqlite > report.txt || true
grep -E "^(total jobs|complete|surviving mutants)" report.txt || true
echo "full report: $work/repo/report.txt"
