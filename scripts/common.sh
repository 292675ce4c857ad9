# Sourced by the scripts in this folder: the repository root, the build folder,
# and SGDX_DATA_DIR defaulting to ../shared/data when that exists.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SGDX_BUILD_DIR:-$root/build}"
if [[ -z "${SGDX_DATA_DIR:-}" && -d "$root/../shared/data" ]]; then
  export SGDX_DATA_DIR="$(cd "$root/../shared/data" && pwd)"
fi
