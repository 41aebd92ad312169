// Scalar math of the Mamba-1 scan kernels (docs/DESIGN.md §1.1): exp2 as an FMA
// polynomial, and softplus (mamba_ssm's threshold) and silu in forms built on
// MUFU rcp and ex2 that are accurate to a few f32 ulps. The MUFU exp2 and the
// 16-bit <-> f32 conversions shared with the other kernels are in
// kernels/common/{math,convert}.cuh. No toolkit headers: everything is inline
// PTX or plain arithmetic, so NVRTC needs no include path.
#pragma once

#include "common/convert.cuh"
#include "common/math.cuh"
#include "common/smem.cuh"

#ifndef SCAN_ELEM_EXP_POLY
#define SCAN_ELEM_EXP_POLY 0
#endif

// 2^x on the FMA pipe: Cody-Waite split x = j + r with j = rint(x), r in
// [-1/2, 1/2] (exact), a degree-6 minimax polynomial for 2^r (relative error
// 2.6e-9 before f32 rounding, with p(0) = 1 exactly so that identity steps stay
// exact), and 2^j added straight into the exponent field. About 12 FMA-pipe
// instructions instead of one MUFU slot: worth it only for the share of the
// exponentials that keeps the two pipes equally busy.
// The clamp keeps j + exponent(p) inside the normal range: below -126 the result
// is a tiny number (at most 2^-126, where 2^x is below that too, an absolute
// error under 1.2e-38); at 128 the exponent field overflows to Inf/NaN, as a
// true 2^x would overflow f32.
__device__ __forceinline__ float scan_exp2_poly(float x) {
    x = fminf(fmaxf(x, -126.0f), 128.0f);
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const float t = x + magic;
    const float j = t - magic;
    const float r = x - j;
    float p = 1.559467782e-04f;
    p = fmaf(p, r, 1.340664341e-03f);
    p = fmaf(p, r, 9.617692791e-03f);
    p = fmaf(p, r, 5.550310388e-02f);
    p = fmaf(p, r, 2.402265221e-01f);
    p = fmaf(p, r, 6.931472421e-01f);
    p = fmaf(p, r, 1.0f);
    // The low mantissa bits of t hold j (two's complement): shift them into
    // the exponent field. The magic's own bits shift out past bit 31.
    return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

// 1/x on the special-function unit (relative error about 1 ulp); 1/Inf = 0.
__device__ __forceinline__ float scan_rcp(float x) {
#ifndef SSM_EMULATE
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return 1.0f / x;
#endif
}

// exp(x) for the elementwise work (softplus, silu): MUFU by default, or the
// FMA polynomial when SCAN_ELEM_EXP_POLY is set (moves 2 MUFU ops per element
// to the FMA pipe when MUFU, not issue, is the bottleneck).
__device__ __forceinline__ float scan_exp_elem(float x) {
#if SCAN_ELEM_EXP_POLY
    return scan_exp2_poly(x * SSM_LOG2E);
#else
    return ssm_exp2_ftz(x * SSM_LOG2E);
#endif
}

// softplus(x) = x for x > 20 (ssm_core::math::SOFTPLUS_THRESHOLD), else
// log1p(exp(x)), to a few f32 ulps over the whole range. Written as
// max(x, 0) + log1p(w) with w = exp(-|x|) in (0, 1], and log1p(w) = 2 atanh(s),
// s = w / (2 + w) in (0, 1/3]: atanh(s)/s is a degree-4 minimax polynomial in
// s^2 (relative error 4.5e-9). This avoids both log(1 + w) losing the low bits
// of a small w and MUFU.LG2's absolute (not relative) error near 1.
// The threshold needs no branch: for x > 16, log1p(w) < 1.2e-7 is below half
// an ulp of x, so max(x, 0) + log1p(w) rounds to x exactly, which is what both
// the threshold (x > 20) and the f64 log1p(exp(x)) rounded to f32 (16 < x <= 20)
// give. Inf maps to Inf, -Inf to 0, NaN to NaN.
__device__ __forceinline__ float scan_softplus(float x) {
    const float w = scan_exp_elem(-fabsf(x));
    const float s = w * scan_rcp(2.0f + w);
    const float q = s * s;
    float p = 1.400599331e-01f;
    p = fmaf(p, q, 1.400090307e-01f);
    p = fmaf(p, q, 2.001076341e-01f);
    p = fmaf(p, q, 3.333320916e-01f);
    p = fmaf(p, q, 1.0f);
    return fmaxf(x, 0.0f) + 2.0f * s * p;
}

// silu(z) = z * sigmoid(z) = z / (1 + exp(-z)); the limits come out right:
// exp(-z) = Inf for z << 0 gives z * 0, exp(-z) = 0 for z >> 0 gives z.
__device__ __forceinline__ float scan_silu(float z) {
    return z * scan_rcp(1.0f + scan_exp_elem(-z));
}
