// What the decode kernels of both families share (kernels/mamba1/decode.cu,
// kernels/mamba2/decode.cu; docs/kernels/decode.md): the lane geometry of a state
// row, vector access to the f32 state cache and to f32 parameter rows, a lane's
// slice of one state row loaded and stored, the sum over a row's lanes, the
// padding output and the entry points. The families keep only their math and
// their indexing. Needs from the includer D_STATE (N), VEC (floats per access:
// 4, 2 or 1), TPR (lanes per state row) and WARPS (warps per block) (the host
// sets them from ssm_gpu::decode::StateLayout); STREAM_STATE (1: evict-first cache
// hints on the state), MIN_BLOCKS (blocks per SM ptxas must leave room for) and
// DEPENDENT_LAUNCH (1: a programmatic dependent launch) default to 0, 1 and 0. to_f32 comes from kernels/common/types.cuh.
#pragma once

#include "math.cuh"
#include "types.cuh"

#if !defined(D_STATE) || !defined(VEC) || !defined(TPR) || !defined(WARPS)
#error "common/decode_state.cuh needs D_STATE, VEC, TPR and WARPS defined"
#endif
#ifndef STREAM_STATE
#define STREAM_STATE 0
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 1
#endif
#ifndef DEPENDENT_LAUNCH
#define DEPENDENT_LAUNCH 0
#endif

// Programmatic dependent launch (DEPENDENT_LAUNCH = 1, launched with
// cuLaunchKernelEx's programmatic stream serialization by ssm_gpu::decode): the
// grid may start while the stream's previous kernel still runs, so it must wait
// for that kernel (and its memory) before its first global access; and it lets
// the stream's next kernel start as soon as every block of this one is running.
// sm_90+ only (the host launches older devices the ordinary way); no-ops when
// the launch had no such attribute.
__device__ __forceinline__ void decode_allow_dependents() {
#if DEPENDENT_LAUNCH && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void decode_wait_for_predecessor() {
#if DEPENDENT_LAUNCH && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// ---------------------------------------------------------------------------
// Lane geometry: a state row of N floats is spread over TPR lanes, each holding
// VPT vectors of VEC floats, interleaved so that one warp instruction touches
// TPR * VEC * 4 contiguous bytes.
// ---------------------------------------------------------------------------

constexpr int VPT = D_STATE / (VEC * TPR);  // vectors per lane per state row
constexpr int EPT = VPT * VEC;              // state elements per lane per state row
constexpr int SLOTS = 32 / TPR;             // state rows a warp covers side by side
constexpr int THREADS = WARPS * 32;
static_assert(VEC == 4 || VEC == 2 || VEC == 1, "VEC must be 4, 2 or 1");
static_assert(TPR >= 1 && TPR <= 32 && (32 % TPR) == 0, "TPR must be a power of two <= 32");
static_assert(VPT * VEC * TPR == D_STATE, "VEC * TPR must divide D_STATE");

// Element j = k * VEC + e of lane `sub`'s slice of a state row is state index
// lane_state_index(sub, k) + e: for a fixed k the TPR lanes of a row cover
// contiguous memory.
__device__ __forceinline__ int lane_state_index(int sub, int k) { return (sub + k * TPR) * VEC; }

#ifdef SSM_EMULATE
// Host forms for the emulation (kernels/mamba2/decode_emu_check.cu): the vector
// constructors of the vector types ssd_emu.cuh declares, and the NaN of
// math.cuh's device branch.
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float ssm_quiet_nan() { return std::nanf(""); }
#endif

template <int V> struct FloatVec;
template <> struct FloatVec<4> { typedef float4 type; };
template <> struct FloatVec<2> { typedef float2 type; };
template <> struct FloatVec<1> { typedef float type; };
typedef FloatVec<VEC>::type state_vec;

#ifdef SSM_EMULATE
// The host emulation (kernels/mamba2/decode_emu_check.cu under ssd_emu.cuh): the
// same accesses as plain C++ (the cache hints have no host meaning).
template <typename V> inline V load_state_vec(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline float4 load_state(const float* p, float4*) { return load_state_vec<float4>(p); }
inline float2 load_state(const float* p, float2*) { return load_state_vec<float2>(p); }
inline float load_state(const float* p, float*) { return *p; }
inline void store_state(float* p, float4 v) { std::memcpy(p, &v, sizeof v); }
inline void store_state(float* p, float2 v) { std::memcpy(p, &v, sizeof v); }
inline void store_state(float* p, float v) { *p = v; }
#else
// Inline PTX pins the access width: NVVM was seen splitting a float4 store into four
// scalar stores when it lost track of the alignment (the loads stayed vectorized).
#if STREAM_STATE
#define STATE_HINT ".cs"
#else
#define STATE_HINT ""
#endif
__device__ __forceinline__ float4 load_state(const float* p, float4*) {
    float4 v;
    asm volatile("ld.global" STATE_HINT ".v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
    return v;
}
__device__ __forceinline__ float2 load_state(const float* p, float2*) {
    float2 v;
    asm volatile("ld.global" STATE_HINT ".v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "l"(p));
    return v;
}
__device__ __forceinline__ float load_state(const float* p, float*) {
    float v;
    asm volatile("ld.global" STATE_HINT ".f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ void store_state(float* p, float4 v) {
    asm volatile("st.global" STATE_HINT ".v4.f32 [%0], {%1, %2, %3, %4};"
                 :: "l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w) : "memory");
}
__device__ __forceinline__ void store_state(float* p, float2 v) {
    asm volatile("st.global" STATE_HINT ".v2.f32 [%0], {%1, %2};" :: "l"(p), "f"(v.x), "f"(v.y) : "memory");
}
__device__ __forceinline__ void store_state(float* p, float v) {
    asm volatile("st.global" STATE_HINT ".f32 [%0], %1;" :: "l"(p), "f"(v) : "memory");
}
#endif  // SSM_EMULATE
__device__ __forceinline__ state_vec load_state(const float* p) { return load_state(p, (state_vec*)0); }
__device__ __forceinline__ void unpack(float4 v, float* f) { f[0] = v.x; f[1] = v.y; f[2] = v.z; f[3] = v.w; }
__device__ __forceinline__ void unpack(float2 v, float* f) { f[0] = v.x; f[1] = v.y; }
__device__ __forceinline__ void unpack(float v, float* f) { f[0] = v; }
__device__ __forceinline__ void pack(const float* f, float4& v) { v = make_float4(f[0], f[1], f[2], f[3]); }
__device__ __forceinline__ void pack(const float* f, float2& v) { v = make_float2(f[0], f[1]); }
__device__ __forceinline__ void pack(const float* f, float& v) { v = f[0]; }

// Lane `sub`'s EPT floats of the state row that starts `row` floats into `S`
// (zeros when !live, nothing read), and their store back. The row offset is added
// inside the live branch, as the kernels wrote it before these helpers existed:
// forming the row pointer first changed ptxas's schedule for N = 256 and N = 1.
__device__ __forceinline__ void load_state_slice(const float* S, long long row, int sub, bool live,
                                                 float* s) {
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
        if (live) {
            unpack(load_state(S + row + lane_state_index(sub, k)), &s[k * VEC]);
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) s[k * VEC + e] = 0.0f;
        }
    }
}
__device__ __forceinline__ void store_state_slice(float* S, long long row, int sub, const float* s) {
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
        state_vec v;
        pack(&s[k * VEC], v);
        store_state(S + row + lane_state_index(sub, k), v);
    }
}

// The sum of `v` over the TPR lanes of a state row (xor shuffles: every lane gets
// it). Every lane of the warp must take part, live row or not.
__device__ __forceinline__ float row_lanes_sum(float v) {
#pragma unroll
    for (int off = TPR / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// The output of a batch row that has no state: 0 for padding (a negative index),
// NaN for an index past the cache (only possible through the unchecked device
// entry point, which never writes the state there).
__device__ __forceinline__ float stateless_output(long long cache_row) {
    return cache_row < 0 ? 0.0f : ssm_quiet_nan();
}

// VEC consecutive input elements (B or C) in one access: the row starts of B and C
// are multiples of N elements, so with N % VEC == 0 they are VEC-element aligned.
__device__ __forceinline__ void load_inputs(const float* p, float* f) {
    unpack(*reinterpret_cast<const state_vec*>(p), f);
}
template <typename H>
__device__ __forceinline__ void load_inputs(const H* p, float* f) {
#if VEC == 4
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    f[0] = to_f32(H{(unsigned short)(u.x & 0xffffu)});
    f[1] = to_f32(H{(unsigned short)(u.x >> 16)});
    f[2] = to_f32(H{(unsigned short)(u.y & 0xffffu)});
    f[3] = to_f32(H{(unsigned short)(u.y >> 16)});
#elif VEC == 2
    const unsigned u = *reinterpret_cast<const unsigned*>(p);
    f[0] = to_f32(H{(unsigned short)(u & 0xffffu)});
    f[1] = to_f32(H{(unsigned short)(u >> 16)});
#else
    f[0] = to_f32(p[0]);
#endif
}

// The three entry points of a decode kernel, one per input type (NAME_f32,
// NAME_f16, NAME_bf16: the launcher picks one by dtype), each instantiating the
// includer's `decode_step<T>(const ARGS&)` with its THREADS and MIN_BLOCKS.
#define SSM_DECODE_ENTRIES(NAME, ARGS)                                                     \
    extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) NAME##_f32(const ARGS args) { \
        decode_step<float>(args);                                                          \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) NAME##_f16(const ARGS args) { \
        decode_step<f16_t>(args);                                                          \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) NAME##_bf16(const ARGS args) { \
        decode_step<bf16_t>(args);                                                         \
    }
