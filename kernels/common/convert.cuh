// f32 <-> f16 / bf16 conversions on raw 16-bit patterns, shared by every kernel
// family (docs/DESIGN.md §2: inputs f32, f16 or bf16, arithmetic in f32). Narrowing
// rounds to nearest even, as ssm_core::Element::from_f32 does. No toolkit headers:
// everything is inline PTX or bit arithmetic, so NVRTC needs no include path.
//
// With SSM_EMULATE defined (the host emulation of kernels/mamba2/ssd_emu.cuh) the
// same functions are plain C++ computing the same values, so the SSD kernels also
// compile with g++; NVRTC never sees that branch.
#pragma once

#ifndef SSM_EMULATE
// f16 bits -> f32 (exact).
__device__ __forceinline__ float ssm_f16_bits_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
// f32 -> f16 bits, round to nearest even.
__device__ __forceinline__ unsigned short ssm_f32_to_f16_bits(float v) {
    unsigned short r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v));
    return r;
}
// f32 -> bf16 bits, round to nearest even (NaN stays NaN).
__device__ __forceinline__ unsigned short ssm_f32_to_bf16_bits(float v) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v));
    return r;
}
__device__ __forceinline__ float ssm_bits_as_f32(unsigned b) { return __uint_as_float(b); }

// The low / high f16 of a 32-bit word, converted without unpacking it first
// (one cvt from the register half).
__device__ __forceinline__ float ssm_f16x2_lo(unsigned w) {
    float f;
    asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, lo; }" : "=f"(f) : "r"(w));
    return f;
}
__device__ __forceinline__ float ssm_f16x2_hi(unsigned w) {
    float f;
    asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, hi; }" : "=f"(f) : "r"(w));
    return f;
}

// The low / high bf16 of a 32-bit word: a shift or a mask.
__device__ __forceinline__ float ssm_bf16x2_lo(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float ssm_bf16x2_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }

// Two f32 -> one word of two 16-bit values (round to nearest even), `lo` in the
// low half. One cvt.rn.{bf16,f16}x2.f32 (its first source goes to the upper half)
// instead of two conversions, a shift and an or.
__device__ __forceinline__ unsigned ssm_pack_bf16x2(float lo, float hi) {
    unsigned w;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
    return w;
}
__device__ __forceinline__ unsigned ssm_pack_f16x2(float lo, float hi) {
    unsigned w;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
    return w;
}
#else
// Host twins for the emulation (needs <cstring>; _Float16 is IEEE binary16).
inline float ssm_bits_as_f32(unsigned b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}
inline float ssm_f16_bits_to_f32(unsigned short h) {
    _Float16 v;
    std::memcpy(&v, &h, 2);
    return (float)v;
}
inline unsigned short ssm_f32_to_f16_bits(float f) {
    _Float16 v = (_Float16)f;
    unsigned short h;
    std::memcpy(&h, &v, 2);
    return h;
}
inline unsigned short ssm_f32_to_bf16_bits(float f) {
    unsigned x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);  // quiet NaN
    x += 0x7fffu + ((x >> 16) & 1u);
    return (unsigned short)(x >> 16);
}
#endif

// bf16 -> f32 is a shift: the bf16 bits are the high half of the f32.
#ifndef SSM_EMULATE
__device__ __forceinline__
#else
inline
#endif
float ssm_bf16_bits_to_f32(unsigned short b) {
    return ssm_bits_as_f32(((unsigned)b) << 16);
}
