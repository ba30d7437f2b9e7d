#!/usr/bin/env bash
# Type-check the whole package under its import names (facesr.model, facesr.train, facesr.service).
# The folders are model/, model/train/ and service/, mapped to those names at install time; mypy does not
# follow that mapping, so it checks a throw-away tree of links that spells the import names out.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="$(realpath -s "${PYTHON:-$root/.venv/bin/python}")"  # absolute: the check runs elsewhere
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/facesr"
ln -s "$root/model" "$tree/facesr/model"
ln -s "$root/model/train" "$tree/facesr/train"
ln -s "$root/service" "$tree/facesr/service"
cd "$tree"
"$python" -m mypy --config-file "$root/pyproject.toml" --python-executable "$python" \
    -p facesr.model -p facesr.train -p facesr.service "$@"
