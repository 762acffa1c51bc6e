#!/usr/bin/env bash
# Create .venv (once) and install vision_rwkv into it. Idempotent; safe to re-run.
#
#   bash tools/setup_env.sh [core|seg|sam|deploy|all]      (default: all)
#
#   core  torch, torchvision, timm, mmengine and the package: classification training and the timm models
#   seg   core + mmsegmentation and mmcv 2.1.0, built from source the first time (10-17 min on 2 cores)
#   sam   core + segment-anything, pycocotools, scipy (RWKV-SAM training and its demo)
#   deploy core + onnx, onnxscript, onnxruntime (ONNX export: tools/export_onnx.py)
#   all   everything, plus the test dependencies, timm's test file and Debian's Chromium (apt-get, for the browser
#         test of tools/sam_app.py; driven by Playwright from the dev extra, which never downloads a browser)
#
# tools/train.py sets up seg or sam by itself the first time a config needs them (inside this .venv).
# torch is installed with --isolated so pip ignores local find-links of CPU-only torch wheels:
# torchvision (which timm imports) only loads with the regular torch build of the package index.
# That build also runs on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PART=${1:-all}
case "$PART" in core|seg|sam|deploy|all) ;; *) echo "error: unknown part '$PART' (core, seg, sam, deploy or all)" >&2; exit 2 ;; esac
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
# mmsegmentation 1.2.2 needs mmcv 2.1.0 with its compiled ops, which has no wheel for this torch:
# build it from source once (about 17 minutes on 2 cores). pip caches the built wheel, so a new venv
# reuses it; the cache is only valid for the pinned torch above. FORCE_CUDA=1 builds the CUDA ops too.
if [ "$PART" = seg ] || [ "$PART" = all ]; then
  if ! .venv/bin/python -c "import mmcv.ops" 2>/dev/null; then
    .venv/bin/pip install "setuptools<70" wheel ninja
    MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      .venv/bin/pip install --no-build-isolation mmcv==2.1.0
  fi
fi
case "$PART" in
  core) .venv/bin/pip install -e . ;;
  seg) .venv/bin/pip install -e ".[seg]" ;;
  sam) .venv/bin/pip install -e ".[sam]" ;;
  deploy) .venv/bin/pip install -e ".[deploy]" ;;
  all) .venv/bin/pip install -e ".[dev,seg,sam,deploy]"
    # tests/test_sam_app.py drives /usr/bin/chromium (under CI a missing one fails the test); apt's package lists are
    # refreshed only when the install fails without it
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
      apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
      [ "$(id -u)" -ne 0 ] && apt=(sudo "${apt[@]}")
      "${apt[@]}" install -y chromium chromium-driver || { "${apt[@]}" update && "${apt[@]}" install -y chromium chromium-driver; }
    fi
    # tests/test_timm_contract.py runs timm's own tests/test_models.py on our models: it reads the file from
    # the sdist of the installed timm version, downloaded here once (tests never download).
    TIMM_VERSION=$(.venv/bin/python -c "import timm; print(timm.__version__)")
    if [ ! -f ".cache/timm-sdist/timm-$TIMM_VERSION.tar.gz" ]; then
      .venv/bin/pip download --no-deps --no-binary :all: -d .cache/timm-sdist "timm==$TIMM_VERSION"
    fi ;;
esac
