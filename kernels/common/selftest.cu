// Runtime self-test kernels (crates/gpu/tests/gpu_runtime.rs and the offline
// resource tests): they prove that NVRTC compiles our sources with their
// includes, the toolkit headers and -D defines, that modules load and launch,
// and that CUDA-event timing and attribute reads work. Not part of any model.
#include "selftest.cuh"

// out[i] = SELFTEST_SCALE * x[i] + y[i], grid-stride.
extern "C" __global__ void ssm_selftest_axpy(float* __restrict__ out,
                                             const float* __restrict__ x,
                                             const __nv_bfloat16* __restrict__ y,
                                             long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] = SELFTEST_SCALE * selftest_load(x, i) + selftest_load(y, i);
    }
}

// Block-wide sum through static shared memory: gives the kernel a nonzero
// static smem footprint and a barrier for the attribute / ptxas checks.
// One block of exactly SELFTEST_THREADS threads; out[0] = sum of x[0..n).
#ifndef SELFTEST_THREADS
#define SELFTEST_THREADS 256
#endif
extern "C" __global__ void __launch_bounds__(SELFTEST_THREADS)
ssm_selftest_block_sum(float* __restrict__ out, const float* __restrict__ x, long long n) {
    __shared__ float partial[SELFTEST_THREADS];
    float sum = 0.0f;
    for (long long i = threadIdx.x; i < n; i += SELFTEST_THREADS) sum += x[i];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = SELFTEST_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = partial[0];
}
