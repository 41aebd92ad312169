// Global-memory access of the Mamba-1 scan kernels: chunks of 8 consecutive
// time steps of one row, loaded and stored as 16-byte vectors when the host
// has checked alignment (SCAN_VEC_IO), element by element otherwise.
//
// SCAN_DTYPE selects the storage type of u, delta, z, B, C and out:
// 0 = f32, 1 = f16, 2 = bf16.
#pragma once
#include "scan_math.cuh"

#define SCAN_CHUNK 8  // time steps per chunk

#if SCAN_DTYPE == 0
typedef float scan_elem_t;
#define SCAN_CHUNK_WORDS 8
#elif SCAN_DTYPE == 1 || SCAN_DTYPE == 2
typedef unsigned short scan_elem_t;
#define SCAN_CHUNK_WORDS 4
#else
#error "SCAN_DTYPE must be 0 (f32), 1 (f16) or 2 (bf16)"
#endif

// The raw bits of 8 consecutive elements.
struct ScanChunk {
    unsigned w[SCAN_CHUNK_WORDS];
};

__device__ __forceinline__ void scan_chunk_zero(ScanChunk& c) {
#pragma unroll
    for (int i = 0; i < SCAN_CHUNK_WORDS; ++i) c.w[i] = 0u;
}

// Element i (a compile-time constant after unrolling) of a chunk, as f32.
__device__ __forceinline__ float scan_chunk_get(const ScanChunk& c, int i) {
#if SCAN_DTYPE == 0
    return __uint_as_float(c.w[i]);
#elif SCAN_DTYPE == 1
    return (i & 1) ? ssm_f16x2_hi(c.w[i >> 1]) : ssm_f16x2_lo(c.w[i >> 1]);
#else
    return (i & 1) ? ssm_bf16x2_hi(c.w[i >> 1]) : ssm_bf16x2_lo(c.w[i >> 1]);
#endif
}

__device__ __forceinline__ float scan_elem_to_f32(scan_elem_t x) {
#if SCAN_DTYPE == 0
    return x;
#elif SCAN_DTYPE == 1
    return ssm_f16x2_lo((unsigned)x);
#else
    return ssm_bf16x2_lo((unsigned)x);
#endif
}

__device__ __forceinline__ scan_elem_t scan_f32_to_elem(float x) {
#if SCAN_DTYPE == 0
    return x;
#elif SCAN_DTYPE == 1
    return (scan_elem_t)(ssm_pack_f16x2(x, 0.0f) & 0xffffu);
#else
    return (scan_elem_t)(ssm_pack_bf16x2(x, 0.0f) & 0xffffu);
#endif
}

// Read-only 16-byte load through the non-coherent path (the inputs are never
// written while the kernel runs).
__device__ __forceinline__ uint4 scan_ld16(const void* p) {
    uint4 v;
    asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// Streaming 16-byte store: the output is not read again by this kernel.
__device__ __forceinline__ void scan_st16(void* p, uint4 v) {
    asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y),
                 "r"(v.z), "r"(v.w)
                 : "memory");
}

// Load positions pos0 .. pos0+7 of `row` (element 0 of the row at `row`) that lie
// in [lo, hi); the others read as 0. With SCAN_VEC_IO the host guarantees that
// rows start 16-byte aligned and L is a multiple of 8, so a chunk is either
// wholly inside [0, L) or wholly outside, and [lo, hi) lies within [0, L).
__device__ __forceinline__ void scan_load_chunk(ScanChunk& c, const scan_elem_t* row,
                                                long long pos0, long long lo, long long hi) {
#if SCAN_VEC_IO
    if (pos0 < hi && pos0 + SCAN_CHUNK > lo) {
        const uint4* p = reinterpret_cast<const uint4*>(row + pos0);
#pragma unroll
        for (int v = 0; v < SCAN_CHUNK_WORDS / 4; ++v) {
            const uint4 q = scan_ld16(p + v);
            c.w[4 * v + 0] = q.x;
            c.w[4 * v + 1] = q.y;
            c.w[4 * v + 2] = q.z;
            c.w[4 * v + 3] = q.w;
        }
    } else {
        scan_chunk_zero(c);
    }
#else
    scan_chunk_zero(c);
#pragma unroll
    for (int i = 0; i < SCAN_CHUNK; ++i) {
        const long long pos = pos0 + i;
        if (pos >= lo && pos < hi) {
#if SCAN_DTYPE == 0
            c.w[i] = __float_as_uint(row[pos]);
#else
            c.w[i >> 1] |= (unsigned)row[pos] << (16 * (i & 1));
#endif
        }
    }
#endif
}

// Store the elements of `y` at positions pos0 .. pos0+7 of `row` that lie in
// [lo, hi) (a sequence's own positions; the rest belong to other sequences).
__device__ __forceinline__ void scan_store_chunk(scan_elem_t* row, long long pos0, long long lo,
                                                 long long hi, const float (&y)[SCAN_CHUNK]) {
#if SCAN_VEC_IO
    if (pos0 >= lo && pos0 + SCAN_CHUNK <= hi) {
        unsigned w[SCAN_CHUNK_WORDS];
#pragma unroll
        for (int i = 0; i < SCAN_CHUNK_WORDS; ++i) {
#if SCAN_DTYPE == 0
            w[i] = __float_as_uint(y[i]);
#elif SCAN_DTYPE == 1
            w[i] = ssm_pack_f16x2(y[2 * i], y[2 * i + 1]);
#else
            w[i] = ssm_pack_bf16x2(y[2 * i], y[2 * i + 1]);
#endif
        }
        uint4* p = reinterpret_cast<uint4*>(row + pos0);
#pragma unroll
        for (int v = 0; v < SCAN_CHUNK_WORDS / 4; ++v)
            scan_st16(p + v, make_uint4(w[4 * v], w[4 * v + 1], w[4 * v + 2], w[4 * v + 3]));
        return;
    }
#endif
#pragma unroll
    for (int i = 0; i < SCAN_CHUNK; ++i) {
        const long long pos = pos0 + i;
        if (pos >= lo && pos < hi) row[pos] = scan_f32_to_elem(y[i]);
    }
}
