// Probes of the card's ceilings, run once at the start of every benchmark run
// (benches/src/ceilings.rs): floors and "% of floor" use what these measure on
// the card in hand, not a datasheet. (Copy bandwidth is cuMemcpyDtoD and the
// bf16 MMA rate is cuBLAS; only the exp2 unit needs a kernel of our own.)
//
// ssm_ceiling_exp2: the MUFU ex2 rate, through the very helper the kernels use
// for their decays (ssm_exp2_ftz, common/math.cuh). CEILING_CHAINS independent
// chains x = 2^-x per thread, so the unit's throughput and not one chain's
// latency limits; the negation folds into the MUFU operand, so nothing but MUFU
// issues in the loop. The values converge to the fixed point of 2^-x (~0.64):
// no denormals, no infinities. The sum is stored so the chains stay live.
// Rate = threads * iters * CEILING_CHAINS / time.
#include "common/math.cuh"

#ifndef CEILING_CHAINS
#define CEILING_CHAINS 8
#endif

extern "C" __global__ void ssm_ceiling_exp2(float* __restrict__ out, float seed, long long iters) {
    float x[CEILING_CHAINS];
#pragma unroll
    for (int k = 0; k < CEILING_CHAINS; ++k) {
        x[k] = seed + 1e-3f * (float)(threadIdx.x & 255) + 0.1f * (float)k;
    }
#pragma unroll 4
    for (long long i = 0; i < iters; ++i) {
#pragma unroll
        for (int k = 0; k < CEILING_CHAINS; ++k) {
            x[k] = ssm_exp2_ftz(-x[k]);
        }
    }
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < CEILING_CHAINS; ++k) {
        sum += x[k];
    }
    out[(long long)blockIdx.x * blockDim.x + threadIdx.x] = sum;
}
