#!/usr/bin/env bash
# Type-check the whole package under its import names (facesr.model, facesr.train, facesr.service,
# facesr.client). The folders are model/, model/train/, service/ and client/, mapped to those names at install time; mypy does not
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
ln -s "$root/client" "$tree/facesr/client"
cd "$tree"
"$python" -m mypy --config-file "$root/pyproject.toml" --python-executable "$python" \
    -p facesr.model -p facesr.train -p facesr.service -p facesr.client "$@"
