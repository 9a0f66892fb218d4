# Source me: `source activate.sh`
_folo_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
if [ ! -f "$_folo_root/.venv/bin/activate" ]; then
    echo "activate.sh: no .venv yet; run 'bash setup_env.sh' first" >&2
    return 1 2>/dev/null || exit 1
fi
. "$_folo_root/.venv/bin/activate"
echo "FoloVLLM env: $(python --version 2>&1) at $(command -v python)"
unset _folo_root
