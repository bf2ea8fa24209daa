# Sourced by bin/difflab and bin/test: make sure .venv exists with difflab and the pinned torch installed.
# Re-installs only when pyproject.toml or constraints.txt change (a stamp file holds their hash).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${DIFFLAB_EXTRAS:-dev}"
stamp="$venv/.difflab-stamp-$extras"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "difflab: setting up $venv (first run only; torch==2.13.0 CPU build) ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q -c "$root/constraints.txt" "torch==2.13.0" >&2
    "$venv/bin/python" -m pip install -q -c "$root/constraints.txt" -e "$root[$extras]" >&2
    # k-diffusion, an anchor the tests compare against: its declared deps (torchvision, wandb, ...)
    # are not needed by k_diffusion.sampling and would pull a CUDA torch, hence --no-deps
    case "$extras" in *dev*|*bench*)
        "$venv/bin/python" -m pip install -q --no-deps "k-diffusion==0.1.1.post1" >&2 ;;
    esac
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
