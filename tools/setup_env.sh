#!/usr/bin/env bash
# Create .venv (once) and install vision_rwkv with its pinned torch. Idempotent; safe to re-run.
#
# torch is installed with --isolated so pip ignores local find-links of CPU-only torch wheels:
# torchvision (which timm imports) only loads with the regular torch build of the package index.
# That build also runs on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_PINS="torch==2.13.0 torchvision==0.28.0"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision; assert torch.__version__.split('+')[0] == '2.13.0'" 2>/dev/null; then
  cert_args=()
  cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  [ -f "$cert" ] && cert_args=(--cert "$cert")
  .venv/bin/pip install --isolated "${cert_args[@]}" --default-timeout 180 $TORCH_PINS
fi
.venv/bin/pip install -e ".[dev]"
