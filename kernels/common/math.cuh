// Scalar math shared by every kernel family, in the exact forms of
// ssm_core::math (crates/core/src/math.rs: same threshold, same order of
// operations; docs/DESIGN.md §1.1, §1.2). The Mamba-1 scan's faster polynomial
// forms of softplus and silu are in kernels/mamba1/scan_math.cuh.
//
// With SSM_EMULATE defined (kernels/mamba2/ssd_emu.cuh) the functions compile as
// plain C++ for the host emulation; NVRTC never sees that branch.
#pragma once

#ifndef SSM_EMULATE
#define SSM_MATH_DEV __device__ __forceinline__
#else
#define SSM_MATH_DEV inline
#endif

// log2(e): decays are formed as exp2 of dt * A * log2(e), folded into A on load.
#define SSM_LOG2E 1.4426950408889634f

// 2^x on the special-function unit (MUFU.EX2, relative error about 2^-22) with
// denormal results flushed to zero. One issue slot, but the unit retires only 16
// lanes per clock per SM, an eighth of the FMA rate (the Mamba-1 scan moves part
// of its exps to kernels/mamba1/scan_math.cuh's FMA polynomial). One instruction (exp2f adds a range check and
// two multiplies around it; without .ftz ptxas wraps denormal handling around it).
// ex2(0) is exactly 1, which masked (identity) steps rely on. The decays it forms
// are products with values of order one, where a flushed 2^-126 is below every
// tolerance.
SSM_MATH_DEV float ssm_exp2_ftz(float x) {
#ifndef SSM_EMULATE
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

// softplus(x) = x for x > 20 (ssm_core::math::SOFTPLUS_THRESHOLD), else log1p(exp(x)).
SSM_MATH_DEV float ssm_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// silu(z) = z * sigmoid(z) = z / (1 + exp(-z)); exp(-z) = Inf for z << 0 gives
// z / Inf = -0, exp(-z) = 0 for z >> 0 gives z.
SSM_MATH_DEV float ssm_silu(float z) { return z / (1.0f + expf(-z)); }

// A quiet NaN (what unwritten outputs are poisoned with on the host).
#ifndef SSM_EMULATE
__device__ __forceinline__ float ssm_quiet_nan() { return __int_as_float(0x7fffffff); }
#endif
