#!/usr/bin/env bash
# Usage: bash scripts/setup.sh [demo|test|install]
#   install  apt packages from requirements/apt.txt (as root), a venv in .venv from the distro's python3,
#            this package with its test extras, pinned by requirements/constraints.txt
#   demo     install, then run the main job: a 4-host sandbox cluster, a multi-node torch job, teardown
#   test     install, then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-install}

missing=()
while read -r pkg; do
    [[ -z $pkg || $pkg == \#* ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done < requirements/apt.txt
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]]; then
        echo "setup: apt-get install ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: not root, cannot install: ${missing[*]} (the sandbox tests will skip)" >&2
    fi
fi

# The distro's interpreter, not a pyenv one under /root: sandbox hosts get a private /root.
if [[ ! -x .venv/bin/python ]]; then
    /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e '.[test]' 2>&1 \
    | grep -v "^WARNING: Location 'file:" >&2 || true
# DeepSpeed, the engine's second path: built from its sdist without JIT ops, against the torch already here
# (build isolation would fetch another torch).
if ! .venv/bin/python -c 'import deepspeed' 2>/dev/null; then
    DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --no-build-isolation -c requirements/constraints.txt \
        'deepspeed==0.19.8' 2>&1 | grep -v "^WARNING: Location 'file:" >&2 || true
fi
.venv/bin/python -c 'import orchestrator, torch, deepspeed' # fail here, not in the middle of a test run

case $mode in
    install) ;;
    demo) exec .venv/bin/orchestrator demo ;;
    test) exec .venv/bin/python -m pytest -q --durations=15 ;;
    *) echo "usage: bash scripts/setup.sh [demo|test|install]" >&2; exit 2 ;;
esac
