# Hashes of each CUDA kernel's sources, compiled into the library, and the
# hashes a GPU run verified (cuda/verified_kernels.txt); see
# include/sgdx/ops/cuda_kernels.h. A kernel's hash is the SHA-256 of the lines
# "<path> <sha256 of the file>\n" over its .cu file and every shared CUDA/detail
# header, paths relative to the source root, sorted (scripts/kernel_hashes.sh
# computes the same).
set(_sgdx_kernels rsgd_step gradqueue_step gradqueue_cluster_stats kmeans per_sample_norms)
set(_sgdx_kernel_cu_rsgd_step cuda/rsgd_step.cu)
set(_sgdx_kernel_cu_gradqueue_step cuda/gradqueue_step.cu)
set(_sgdx_kernel_cu_gradqueue_cluster_stats cuda/gradqueue_cluster.cu)
set(_sgdx_kernel_cu_kmeans cuda/kmeans.cu)
set(_sgdx_kernel_cu_per_sample_norms cuda/per_sample_norms.cu)

file(GLOB _sgdx_shared RELATIVE "${CMAKE_CURRENT_SOURCE_DIR}"
     "${CMAKE_CURRENT_SOURCE_DIR}/cuda/*.cuh" "${CMAKE_CURRENT_SOURCE_DIR}/include/sgdx/detail/*.h")
set(_verified_file "${CMAKE_CURRENT_SOURCE_DIR}/cuda/verified_kernels.txt")
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_verified_file}")
file(STRINGS "${_verified_file}" _verified_lines REGEX "^[a-z_]+ [0-9a-f]+")

set(SGDX_KERNEL_HASH_DEFINES "")
foreach(_k IN LISTS _sgdx_kernels)
  set(_files ${_sgdx_kernel_cu_${_k}} ${_sgdx_shared})
  list(SORT _files)
  set(_listing "")
  foreach(_f IN LISTS _files)
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/${_f}")
    file(SHA256 "${CMAKE_CURRENT_SOURCE_DIR}/${_f}" _h)
    string(APPEND _listing "${_f} ${_h}\n")
  endforeach()
  string(SHA256 _source "${_listing}")
  if(NOT SGDX_WITH_CUDA)
    set(_source "")
  endif()
  set(_verified "")
  foreach(_line IN LISTS _verified_lines)
    if(_line MATCHES "^${_k} ([0-9a-f]+)")
      set(_verified "${CMAKE_MATCH_1}")
    endif()
  endforeach()
  string(APPEND SGDX_KERNEL_HASH_DEFINES
         "#define SGDX_SOURCE_HASH_${_k} \"${_source}\"\n#define SGDX_VERIFIED_HASH_${_k} \"${_verified}\"\n")
endforeach()
configure_file(cmake/kernel_hashes.h.in ${CMAKE_CURRENT_BINARY_DIR}/include/sgdx/kernel_hashes.h @ONLY)
