#!/usr/bin/env bash
# GPU check on a GPU host: installs AIRCON with the CUDA build of torch into its own virtual
# environment, shows the GPU (nvidia-smi, torch.cuda, onnxruntime's providers), then runs the
# phantom demo (nnU-Net demo models) and the ProstateX demo (TAPS) with
# `segmentation.device: cuda`, printing per-stage times and the GPU memory used by each run.
# Any failure stops it with a non-zero status and "gpu-check: FAILED: ...".
#   scripts/gpu-check.sh                     install (PyPI; a few minutes with a warm pip cache), run
#   SKIP_INSTALL=1 scripts/gpu-check.sh      run with the environment as it is
# Environment:
#   VENV          the virtual environment (default .venv-gpu; kept apart from .venv's CPU torch)
#   TORCH_SPEC    default "torch==2.13.0 torchvision==0.28.0", the version scripts/install.sh
#                 pins; from PyPI on Linux this is the CUDA build
#   SYSTEM_TORCH  1: a venv over the system Python's packages, using the torch already there
#   WHEELS        a folder of wheels: install from it only (a host without a package index)
#   EXTRA         the pip extra for TAPS's runtime (default taps-gpu: onnxruntime-gpu)
#   STUDY         a ProstateX (or other MR) study folder for the second demo (default: the
#                 demo's own, ../shared/data/prostatex/ProstateX-0000, else demo-data/)
#   OUT           where the runs, logs and memory samples go (default gpu-check/)
#   DEMO_TIMEOUT_S  seconds each demo may take (default 180)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-gpu}
OUT=${OUT:-gpu-check}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0 torchvision==0.28.0"}
EXTRA=${EXTRA:-taps-gpu}
DEMO_TIMEOUT_S=${DEMO_TIMEOUT_S:-180}
PY=$VENV/bin/python

die() {
  echo "gpu-check: FAILED: $*" >&2
  exit 1
}
step() { echo "== $* ($(date +%T))"; }

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver on this host"
step "nvidia-smi"
nvidia-smi || die "nvidia-smi does not reach the GPU"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  step "install into $VENV"
  venv_flags=()
  torch_spec=$TORCH_SPEC
  if [ "${SYSTEM_TORCH:-0}" = 1 ]; then
    venv_flags=(--system-site-packages)
    torch_spec=""
  fi
  [ -x "$PY" ] || python3 -m venv "${venv_flags[@]}" "$VENV" || die "cannot make $VENV"
  pip=("$PY" -m pip install -q)
  [ -n "${WHEELS:-}" ] && pip+=(--no-index --find-links "$WHEELS")
  # torch and nnunetv2 in one command, so pip resolves one torch build (scripts/install.sh).
  # shellcheck disable=SC2086  # TORCH_SPEC is a list of requirements
  "${pip[@]}" $torch_spec -e ".[$EXTRA]" || die "pip install of AIRCON with $torch_spec failed"
  "${pip[@]}" --no-deps "lavlab-taps==1.1.2" || die "pip install of lavlab-taps failed"
fi
[ -x "$PY" ] || die "$PY not found (SKIP_INSTALL=1 needs an installed VENV)"

step "torch and onnxruntime"
"$PY" - <<'EOF' || die "torch or onnxruntime cannot use the GPU"
import sys

import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device (a CPU build? see TORCH_SPEC)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}")
import onnxruntime as ort  # TAPS runs its network with onnxruntime

providers = ort.get_available_providers()
print(f"onnxruntime {ort.__version__}, providers {providers}")
if "CUDAExecutionProvider" not in providers:
    sys.exit("onnxruntime has no CUDAExecutionProvider: TAPS would run on the CPU (EXTRA=taps-gpu)")
EOF

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CFG=$OUT/config.yaml
step "config: config.yaml with segmentation.device: cuda -> $CFG"
"$PY" - "$CFG" <<'EOF' || die "cannot write $CFG"
import sys
from pathlib import Path

import yaml

raw = yaml.safe_load(Path("config.yaml").read_text())
raw.setdefault("segmentation", {})["device"] = "cuda"
raw.setdefault("paths", {})["models"] = str(Path("models").resolve())
Path(sys.argv[1]).write_text(yaml.safe_dump(raw, sort_keys=False))
EOF
"$VENV/bin/aircon" -c "$CFG" check-config >/dev/null || die "$CFG does not pass check-config"

# One demo with the GPU's memory sampled every 200 ms around it; its summary and the memory
# used above what was in use before it started.
run_demo() {
  local name=$1
  shift
  local mem=$OUT/$name-memory.csv rc=0 sampler
  step "demo $name"
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 >"$mem" &
  sampler=$!
  sleep 0.5
  timeout "$((DEMO_TIMEOUT_S + 30))" "$VENV/bin/aircon" -c "$CFG" demo --json \
    --out "$OUT/$name" --timeout "$DEMO_TIMEOUT_S" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log" ||
    rc=$?
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    tail -n 30 "$OUT/$name.log" >&2 || true
    tail -n 30 "$OUT/$name/gateway.log" >&2 || true
    die "demo $name exited with status $rc (logs: $OUT/$name.log, $OUT/$name/gateway.log)"
  fi
  "$PY" - "$OUT/$name.json" "$mem" <<'EOF' || die "demo $name: see $OUT/$name.json"
import json
import sys

summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
src, job = summary["source"], summary.get("job") or {}
print(f"{'OK' if summary['ok'] else 'FAILED'}: {src['label']}, {src['instances']} instances; "
      f"job {job.get('id')} {job.get('state')} {job.get('reason') or ''}")
for name, m in summary["models"].items():
    print(f"  model {name}: {m['state']} {m.get('version', '')} segment {m.get('segment_s', '-')} s "
          f"{m.get('reason', '')}")
print("  stage times (s): " + ", ".join(f"{k} {v:.2f}" for k, v in summary["timings_s"].items()))
first: dict[str, int] = {}
peak: dict[str, int] = {}
for line in open(sys.argv[2]):
    parts = [p.strip() for p in line.split(",")]
    if len(parts) == 2 and parts[1].isdigit():
        first.setdefault(parts[0], int(parts[1]))
        peak[parts[0]] = max(peak.get(parts[0], 0), int(parts[1]))
if not peak:
    sys.exit("no GPU memory samples")
for gpu in sorted(peak):
    print(f"  GPU {gpu} memory: peak {peak[gpu]} MiB, {peak[gpu] - first[gpu]} MiB above the "
          f"{first[gpu]} MiB in use before the run")
if not summary["ok"]:
    sys.exit(1)
if max(peak[g] - first[g] for g in peak) < 64:
    sys.exit("the GPU's memory hardly moved: did the model run on the CPU?")
EOF
}

start=$(date +%s)
run_demo phantom --phantom
if [ -n "${STUDY:-}" ]; then
  run_demo prostatex --study "$STUDY"
else
  run_demo prostatex
fi
step "gpu-check: OK in $(($(date +%s) - start)) s of demos; results under $OUT"
