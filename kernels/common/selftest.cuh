// Helpers of the runtime self-test (selftest.cu). Included as "selftest.cuh"
// (relative to the including file) to exercise include resolution; not meant
// for production kernels.
#pragma once

#include <cuda_bf16.h>

#ifndef SELFTEST_SCALE
#error "selftest.cu needs SELFTEST_SCALE defined (the runtime passes it with -D)"
#endif

__device__ __forceinline__ float selftest_load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float selftest_load(const __nv_bfloat16* p, long long i) {
    return __bfloat162float(p[i]);
}
