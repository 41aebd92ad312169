// Throughput probe of the exp2 unit (MUFU.EX2), the ceiling of the Mamba-1
// scan: 8 independent chains x = 2^-x per thread (the negation folds into the
// MUFU operand), so nothing but MUFU issues in the loop. The sum is stored so
// that the chains cannot be optimised away. Rate = threads * iters * 8 / time.
#include "scan_math.cuh"

extern "C" __global__ void scan_probe_ex2(float* out, int iters) {
    const unsigned gid = blockIdx.x * blockDim.x + threadIdx.x;
    float x[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = 1e-3f * (float)(threadIdx.x & 255) + 0.1f * (float)k;
#pragma unroll 4
    for (int i = 0; i < iters; ++i) {
#pragma unroll
        for (int k = 0; k < 8; ++k) x[k] = ssm_exp2_ftz(-x[k]);
    }
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) s += x[k];
    out[gid] = s;
}
