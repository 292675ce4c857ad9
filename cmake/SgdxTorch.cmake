# Locates LibTorch. Order: an explicit Torch_DIR / CMAKE_PREFIX_PATH, then
# SGDX_LIBTORCH (env or cache: a LibTorch root or its share/cmake), then the
# torch of SGDX_PYTHON (default: the project's .venv, else python3 on PATH).
set(SGDX_LIBTORCH "$ENV{SGDX_LIBTORCH}" CACHE PATH "Root of a LibTorch >= 2.4 to use instead of the venv's")
if(SGDX_LIBTORCH)
  list(APPEND CMAKE_PREFIX_PATH "${SGDX_LIBTORCH}" "${SGDX_LIBTORCH}/share/cmake")
elseif(NOT Torch_DIR)
  if(EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/.venv/bin/python")
    set(_py "${CMAKE_CURRENT_SOURCE_DIR}/.venv/bin/python")
  else()
    find_program(_py NAMES python3 python)
  endif()
  set(SGDX_PYTHON "${_py}" CACHE FILEPATH "Python whose torch provides LibTorch")
  execute_process(
    COMMAND "${SGDX_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_QUIET RESULT_VARIABLE _rc)
  if(_rc EQUAL 0 AND _torch_prefix)
    list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
  endif()
endif()

# find_package(Torch) overwrites CUDA architecture settings (it sets
# CMAKE_CUDA_ARCHITECTURES OFF and appends -gencode flags from
# TORCH_CUDA_ARCH_LIST). We pin its list, then restore CMake-native arch
# handling for our own kernels.
set(SGDX_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures for sgdx kernels")
set(SGDX_TORCH_ARCH_LIST "")
foreach(_a IN LISTS SGDX_CUDA_ARCHITECTURES)
  string(REGEX REPLACE "^([0-9]+)([0-9])$" "\\1.\\2" _dotted "${_a}")
  list(APPEND SGDX_TORCH_ARCH_LIST "${_dotted}")
endforeach()
list(JOIN SGDX_TORCH_ARCH_LIST ";" SGDX_TORCH_ARCH_LIST)

option(SGDX_ENABLE_CUDA "Compile sgdx's CUDA kernels when possible" ON)
set(SGDX_WITH_CUDA OFF)
include(CheckLanguage)
if(SGDX_ENABLE_CUDA)
  check_language(CUDA)
endif()
# Host code is C++20, CUDA code C++17: CMake 3.25 knows no CUDA20 flag for nvcc
# (Modules/Compiler/NVIDIA-CUDA.cmake stops at CUDA17; nvcc 13 itself accepts
# -std=c++20), so headers shared with the kernels (sgdx/detail) stay C++17. Set
# before find_package(Torch): a CUDA LibTorch enables CUDA itself and would copy
# CMAKE_CXX_STANDARD into CMAKE_CUDA_STANDARD, which then fails its try_run.
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
# With TORCH_CUDA_ARCH_LIST unset, a CUDA LibTorch probes the build machine's GPUs;
# pin the list whether or not sgdx compiles kernels.
set(_saved_env_arch "$ENV{TORCH_CUDA_ARCH_LIST}")
set(ENV{TORCH_CUDA_ARCH_LIST} "${SGDX_TORCH_ARCH_LIST}")
if(SGDX_ENABLE_CUDA AND CMAKE_CUDA_COMPILER)
  set(CMAKE_CUDA_ARCHITECTURES ${SGDX_CUDA_ARCHITECTURES})
  enable_language(CUDA)
  unset(CMAKE_CUDA_ARCHITECTURES)  # else Torch warns that it ignores it
endif()

find_package(Torch REQUIRED)
set(ENV{TORCH_CUDA_ARCH_LIST} "${_saved_env_arch}")
message(STATUS "sgdx: LibTorch ${Torch_VERSION} from ${TORCH_INSTALL_PREFIX}")
if(Torch_VERSION VERSION_LESS 2.4)
  message(FATAL_ERROR "sgdx needs LibTorch >= 2.4, found ${Torch_VERSION}")
endif()

# A CUDA LibTorch enables the CUDA language even when SGDX_ENABLE_CUDA is OFF:
# CMAKE_CUDA_COMPILER alone does not mean sgdx compiles kernels.
if(SGDX_ENABLE_CUDA AND CMAKE_CUDA_COMPILER AND (TARGET torch_cuda OR TORCH_CUDA_LIBRARIES))
  set(SGDX_WITH_CUDA ON)
  # Undo Torch's arch flags: our targets use CUDA_ARCHITECTURES.
  string(REGEX REPLACE "-gencode[ =;]*arch=compute_[0-9a-z]+,code=[a-z_0-9]+" "" CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS}")
  set(CMAKE_CUDA_ARCHITECTURES ${SGDX_CUDA_ARCHITECTURES})
endif()
message(STATUS "sgdx: CUDA kernels ${SGDX_WITH_CUDA} (architectures ${SGDX_CUDA_ARCHITECTURES})")
# Torch adds -D_GLIBCXX_USE_CXX11_ABI via TORCH_CXX_FLAGS; keep it in sync.
set(CMAKE_CXX_FLAGS "${CMAKE_CXX_FLAGS} ${TORCH_CXX_FLAGS}")
