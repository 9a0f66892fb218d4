#!/usr/bin/env bash
# Set up a local virtual environment (.venv) for FoloVLLM.
#
#   bash setup_env.sh            # interactive when run from a terminal
#   bash setup_env.sh --yes      # never prompt
#   bash setup_env.sh --gpu      # also install the `gpu` extra (triton)
#
# Environment knobs:
#   PYTHON=python3.11            interpreter used to create .venv
#   FOLOVLLM_TORCH_SPEC="torch==2.6.0"      pin the torch to install
#   FOLOVLLM_TORCH_INDEX=<url>   extra index for torch (e.g. PyTorch's CPU wheel index)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

YES=0
EXTRAS="test"
for arg in "$@"; do
    case "$arg" in
        -y|--yes) YES=1 ;;
        --gpu) EXTRAS="test,gpu" ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "setup_env.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done
# No terminal on stdin (CI, pipes): never ask.
[ -t 0 ] || YES=1

confirm() {  # confirm "question" -> 0 for yes
    if [ "$YES" = 1 ]; then return 0; fi
    read -r -p "$1 [Y/n] " reply
    case "$reply" in n|N|no|NO) return 1 ;; *) return 0 ;; esac
}

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: '$PYTHON' not found; set PYTHON=/path/to/python3.10+" >&2; exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "error: FoloVLLM needs Python >= 3.10, found $("$PYTHON" --version 2>&1)" >&2; exit 1
fi
echo "[setup] using $("$PYTHON" --version 2>&1) at $(command -v "$PYTHON")"

if [ -d .venv ] && ! confirm "[setup] .venv exists; reuse it?"; then
    rm -rf .venv
fi
[ -d .venv ] || "$PYTHON" -m venv .venv
VPY=.venv/bin/python

# torch first, so that the project install below finds it satisfied.
if "$VPY" -c 'import torch' 2>/dev/null; then
    echo "[setup] torch $("$VPY" -c 'import torch; print(torch.__version__)') already installed"
else
    if [ -n "${FOLOVLLM_TORCH_SPEC:-}" ]; then
        spec="$FOLOVLLM_TORCH_SPEC"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        spec="torch>=2.5"          # a CUDA build from PyPI
    else
        # No GPU: a fixed release keeps the install reproducible (and on our CI
        # machines this exact wheel is cached locally).
        spec="torch==2.13.0"
    fi
    echo "[setup] installing $spec"
    if [ -n "${FOLOVLLM_TORCH_INDEX:-}" ]; then
        "$VPY" -m pip install --extra-index-url "$FOLOVLLM_TORCH_INDEX" "$spec"
    else
        "$VPY" -m pip install "$spec"
    fi
fi

echo "[setup] installing folovllm (editable) with extras [$EXTRAS]"
"$VPY" -m pip install -e ".[$EXTRAS]"

echo "[setup] verifying imports"
"$VPY" - <<'PY'
import torch, transformers, safetensors, tokenizers
import folovllm
from folovllm import SamplingParams, ModelConfig, CacheConfig, SchedulerConfig, EngineConfig
print(f"  folovllm {folovllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
try:
    import triton
    print(f"  triton {triton.__version__}")
except ImportError:
    print("  triton not installed (install with --gpu for the Triton kernels)")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"  CUDA available: {p.name}, {p.total_memory / 2**30:.1f} GiB")
else:
    print("  CUDA not available: FoloVLLM will run on the CPU")
PY
echo "[setup] done. Activate with: source activate.sh"
