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
    log="$root/.venv-setup.log"  # the installers' own output, shown only when a step fails
    step() { "$@" >>"$log" 2>&1 || { cat "$log" >&2; echo "difflab: set-up failed (log: $log)" >&2; exit 1; }; }
    : > "$log"
    step python3 -m venv "$venv"
    step "$venv/bin/python" -m pip install -q --upgrade pip
    step "$venv/bin/python" -m pip install -q -c "$root/constraints.txt" "torch==2.13.0"
    step "$venv/bin/python" -m pip install -q -c "$root/constraints.txt" -e "$root[$extras]"
    # k-diffusion, an anchor the tests compare against: its declared deps (torchvision, wandb, ...)
    # are not needed by k_diffusion.sampling and would pull a CUDA torch, hence --no-deps
    case "$extras" in *dev*|*bench*)
        step "$venv/bin/python" -m pip install -q --no-deps "k-diffusion==0.1.1.post1" ;;
    esac
    echo "$want" > "$stamp"
    echo "difflab: set-up done (installers' output in $log)" >&2
fi
export PATH="$venv/bin:$PATH"
