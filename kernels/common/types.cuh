// Element types of the kernels' inputs and outputs (docs/DESIGN.md §2) as structs
// over the raw 16-bit pattern, with to_f32 / from_f32<T> converting through
// kernels/common/convert.cuh. No CUDA headers: NVRTC compiles the kernels
// stand-alone. Used by the decode kernels of both families.
#pragma once

#include "convert.cuh"

struct bf16_t { unsigned short bits; };
struct f16_t { unsigned short bits; };

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16_t v) { return ssm_bf16_bits_to_f32(v.bits); }
__device__ __forceinline__ float to_f32(f16_t v) { return ssm_f16_bits_to_f32(v.bits); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16_t from_f32<bf16_t>(float v) {
    return bf16_t{ssm_f32_to_bf16_bits(v)};
}
template <> __device__ __forceinline__ f16_t from_f32<f16_t>(float v) {
    return f16_t{ssm_f32_to_f16_bits(v)};
}
