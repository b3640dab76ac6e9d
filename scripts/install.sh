#!/usr/bin/env bash
# Install AIRCON on a fresh Debian/Ubuntu machine: system packages, then a virtual environment
# in .venv with a CPU build of PyTorch.
#   scripts/install.sh          the gateway and its models (demo included)
#   scripts/install.sh --dev    plus the test tools (pytest, dcmtk, Orthanc, dicom3tools, Chromium,
#                               Prometheus, Redis and PostgreSQL for the scale-out tests,
#                               docker-compose: `docker-compose config` checks docker-compose.yml)
# On a GPU machine set TORCH_SPEC="torch torchvision" (CUDA build from PyPI) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
pkgs="python3-venv libgl1 libglib2.0-0"
[ $dev = 1 ] && pkgs="$pkgs dcmtk orthanc dicom3tools iproute2 util-linux chromium chromium-driver prometheus redis-server postgresql docker-compose"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
# Orthanc's, Prometheus', Redis' and PostgreSQL's Debian packages start system services on
# install; the tests run their own (private data folders, free loopback ports).
if [ $dev = 1 ] && command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop orthanc prometheus redis-server postgresql 2>/dev/null || true; fi
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch, torchvision and nnunetv2 in ONE command: installed separately, pip swaps in a CUDA torch.
TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0 torchvision==0.28.0"}
extra="[taps]"
[ $dev = 1 ] && extra="[taps,dev]"
.venv/bin/python -m pip install -q $TORCH_SPEC -e ".$extra"
# The external TAPS model (models/taps): the package's own code and weights, without its
# declared onnxruntime-gpu (the [taps] extra above brings the CPU onnxruntime, MONAI, nibabel).
.venv/bin/python -m pip install -q --no-deps "lavlab-taps==1.1.2"
.venv/bin/python -c "import gateway, nnunetv2, torch, taps; print('installed: torch', torch.__version__)"
