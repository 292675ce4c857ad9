#!/usr/bin/env bash
# Installs everything sgdx needs on a fresh Debian 12 machine; idempotent (a
# second run checks and returns in seconds).
#   - Debian packages: compilers, CMake, GoogleTest, Google Benchmark, CLI11,
#     nlohmann-json, zlib, gnuplot (plots), python3-venv, Fashion-MNIST, clang with
#     libFuzzer (scripts/fuzz.sh), clang-format (scripts/format_check.sh), clang-tidy
#     (scripts/tidy.sh), Gloo's headers (c10d's ProcessGroupGloo includes them; the wheel lacks
#     them), iproute2 (scripts/two_hosts.sh), ninja-build (the Python package's build).
#   - LibTorch: the PyPI torch==2.11.0 wheel in the project's .venv, with scikit-build-core
#     and pytest (the Python package's build and tests).
# Set SGDX_LIBTORCH=/path/to/libtorch (>= 2.4) to use your own LibTorch instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
torch_version="${SGDX_TORCH_VERSION:-2.11.0}"

packages=(build-essential cmake git pkg-config zlib1g-dev libgtest-dev libgmock-dev libbenchmark-dev
          libcli11-dev nlohmann-json3-dev gnuplot-nox python3 python3-venv python3-pip dataset-fashion-mnist
          liblinear-tools patchelf clang libclang-rt-14-dev clang-format clang-tidy libgloo-dev iproute2
          ninja-build)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ -n "${SGDX_LIBTORCH:-}" ]]; then
  [[ -f "$SGDX_LIBTORCH/share/cmake/Torch/TorchConfig.cmake" ]] ||
    { echo "setup: SGDX_LIBTORCH=$SGDX_LIBTORCH has no share/cmake/Torch/TorchConfig.cmake" >&2; exit 1; }
  echo "setup: using LibTorch at $SGDX_LIBTORCH"
  exit 0
fi

venv="$root/.venv"
if ! compgen -G "$venv/lib/python3*/site-packages/torch-${torch_version}.dist-info" >/dev/null; then
  echo "setup: installing torch==${torch_version} into $venv (a few GB, a few minutes)"
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "torch==${torch_version}"
fi
# The Python package's build backend and test runner (torch pinned: pip must not move it).
if ! "$venv/bin/python" -c "import scikit_build_core, pytest" 2>/dev/null; then
  echo "setup: installing scikit-build-core and pytest into $venv"
  "$venv/bin/python" -m pip install -q "scikit-build-core>=0.10" pytest "torch==${torch_version}"
fi
echo "setup: ok (torch $torch_version in $venv)"
