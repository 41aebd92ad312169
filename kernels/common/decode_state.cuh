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
// DECODE_STATE_DTYPE (default 0) is the element type the state cache is stored in:
// 0 f32, 1 f16, 2 bf16 (`state_t`). A 16-bit state is widened to f32 on load and
// rounded to nearest even on store; every arithmetic stays f32. With a 16-bit
// state VEC counts 16-bit elements and may be 8 (16-byte accesses); only the
// Mamba-2 kernel supports it (docs/kernels/decode.md, v6).
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
#ifndef DECODE_STATE_DTYPE
#define DECODE_STATE_DTYPE 0
#endif

// The stored element type of the state cache.
#if DECODE_STATE_DTYPE == 0
typedef float state_t;
#elif DECODE_STATE_DTYPE == 1
typedef f16_t state_t;
#elif DECODE_STATE_DTYPE == 2
typedef bf16_t state_t;
#else
#error "DECODE_STATE_DTYPE must be 0 (f32), 1 (f16) or 2 (bf16)"
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
#if DECODE_STATE_DTYPE == 0
static_assert(VEC == 4 || VEC == 2 || VEC == 1, "VEC must be 4, 2 or 1");
#else
static_assert(VEC == 8 || VEC == 4 || VEC == 2 || VEC == 1, "VEC must be 8, 4, 2 or 1 (16-bit state)");
#endif
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
#if VEC == 8
// Only with a 16-bit state (8 elements = 16 bytes): f32 rows (B and C) are read
// as two float4 then.
struct float8_pair { float4 lo, hi; };
template <> struct FloatVec<8> { typedef float8_pair type; };
#endif
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
#if VEC != 8
__device__ __forceinline__ state_vec load_state(const float* p) { return load_state(p, (state_vec*)0); }
#endif
__device__ __forceinline__ void unpack(float4 v, float* f) { f[0] = v.x; f[1] = v.y; f[2] = v.z; f[3] = v.w; }
__device__ __forceinline__ void unpack(float2 v, float* f) { f[0] = v.x; f[1] = v.y; }
__device__ __forceinline__ void unpack(float v, float* f) { f[0] = v; }
__device__ __forceinline__ void pack(const float* f, float4& v) { v = make_float4(f[0], f[1], f[2], f[3]); }
__device__ __forceinline__ void pack(const float* f, float2& v) { v = make_float2(f[0], f[1]); }
__device__ __forceinline__ void pack(const float* f, float& v) { v = f[0]; }

#if DECODE_STATE_DTYPE != 0
// ---------------------------------------------------------------------------
// A 16-bit state: VEC elements per access as VEC / 2 32-bit words (one 16-bit
// value for VEC = 1), 16 bytes per access at VEC = 8; element 2j is the low half
// of word j (little-endian), as cvt.rn.{bf16,f16}x2.f32 packs it.
// ---------------------------------------------------------------------------
constexpr int SWORDS = VEC >= 2 ? VEC / 2 : 1;  // 32-bit words per access

#ifdef SSM_EMULATE
inline void load_state_words(const state_t* p, unsigned* w) {
    if (VEC == 1) {
        unsigned short h;
        std::memcpy(&h, p, 2);
        w[0] = h;
    } else {
        std::memcpy(w, p, 4 * SWORDS);
    }
}
inline void store_state_words(state_t* p, const unsigned* w) {
    if (VEC == 1) {
        const unsigned short h = (unsigned short)w[0];
        std::memcpy(p, &h, 2);
    } else {
        std::memcpy(p, w, 4 * SWORDS);
    }
}
inline float state_half_to_f32(unsigned short h) { return to_f32(state_t{h}); }
inline float state_word_lo(unsigned w) { return state_half_to_f32((unsigned short)(w & 0xffffu)); }
inline float state_word_hi(unsigned w) { return state_half_to_f32((unsigned short)(w >> 16)); }
inline unsigned state_pack(float lo, float hi) {
    return (unsigned)from_f32<state_t>(lo).bits | ((unsigned)from_f32<state_t>(hi).bits << 16);
}
#else
__device__ __forceinline__ void load_state_words(const state_t* p, unsigned* w) {
#if VEC == 8
    asm volatile("ld.global" STATE_HINT ".v4.b32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "l"(p));
#elif VEC == 4
    asm volatile("ld.global" STATE_HINT ".v2.b32 {%0, %1}, [%2];" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
#elif VEC == 2
    asm volatile("ld.global" STATE_HINT ".b32 %0, [%1];" : "=r"(w[0]) : "l"(p));
#else
    unsigned short h;
    asm volatile("ld.global" STATE_HINT ".b16 %0, [%1];" : "=h"(h) : "l"(p));
    w[0] = h;
#endif
}
__device__ __forceinline__ void store_state_words(state_t* p, const unsigned* w) {
#if VEC == 8
    asm volatile("st.global" STATE_HINT ".v4.b32 [%0], {%1, %2, %3, %4};"
                 :: "l"(p), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]) : "memory");
#elif VEC == 4
    asm volatile("st.global" STATE_HINT ".v2.b32 [%0], {%1, %2};" :: "l"(p), "r"(w[0]), "r"(w[1]) : "memory");
#elif VEC == 2
    asm volatile("st.global" STATE_HINT ".b32 [%0], %1;" :: "l"(p), "r"(w[0]) : "memory");
#else
    asm volatile("st.global" STATE_HINT ".b16 [%0], %1;" :: "l"(p), "h"((unsigned short)w[0]) : "memory");
#endif
}
#if DECODE_STATE_DTYPE == 2
__device__ __forceinline__ float state_word_lo(unsigned w) { return ssm_bf16x2_lo(w); }
__device__ __forceinline__ float state_word_hi(unsigned w) { return ssm_bf16x2_hi(w); }
__device__ __forceinline__ unsigned state_pack(float lo, float hi) { return ssm_pack_bf16x2(lo, hi); }
#else
__device__ __forceinline__ float state_word_lo(unsigned w) { return ssm_f16x2_lo(w); }
__device__ __forceinline__ float state_word_hi(unsigned w) { return ssm_f16x2_hi(w); }
__device__ __forceinline__ unsigned state_pack(float lo, float hi) { return ssm_pack_f16x2(lo, hi); }
#endif
__device__ __forceinline__ float state_half_to_f32(unsigned short h) { return to_f32(state_t{h}); }
#endif  // SSM_EMULATE

// VEC stored elements widened to f32, and VEC f32 rounded (nearest even) into words.
__device__ __forceinline__ void unpack_state_words(const unsigned* w, float* f) {
#if VEC == 1
    f[0] = state_half_to_f32((unsigned short)w[0]);
#else
#pragma unroll
    for (int j = 0; j < SWORDS; ++j) {
        f[2 * j] = state_word_lo(w[j]);
        f[2 * j + 1] = state_word_hi(w[j]);
    }
#endif
}
__device__ __forceinline__ void pack_state_words(const float* f, unsigned* w) {
#if VEC == 1
    w[0] = from_f32<state_t>(f[0]).bits;
#else
#pragma unroll
    for (int j = 0; j < SWORDS; ++j) w[j] = state_pack(f[2 * j], f[2 * j + 1]);
#endif
}
#endif  // DECODE_STATE_DTYPE != 0

// Lane `sub`'s EPT floats of the state row that starts `row` elements into `S`
// (zeros when !live, nothing read), and their store back (a 16-bit state widened
// on load, rounded to nearest even on store). The row offset is added
// inside the live branch, as the kernels wrote it before these helpers existed:
// forming the row pointer first changed ptxas's schedule for N = 256 and N = 1.
__device__ __forceinline__ void load_state_slice(const state_t* S, long long row, int sub, bool live,
                                                 float* s) {
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
        if (live) {
#if DECODE_STATE_DTYPE == 0
            unpack(load_state(S + row + lane_state_index(sub, k)), &s[k * VEC]);
#else
            unsigned w[SWORDS];
            load_state_words(S + row + lane_state_index(sub, k), w);
            unpack_state_words(w, &s[k * VEC]);
#endif
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) s[k * VEC + e] = 0.0f;
        }
    }
}
__device__ __forceinline__ void store_state_slice(state_t* S, long long row, int sub, const float* s) {
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
#if DECODE_STATE_DTYPE == 0
        state_vec v;
        pack(&s[k * VEC], v);
        store_state(S + row + lane_state_index(sub, k), v);
#else
        unsigned w[SWORDS];
        pack_state_words(&s[k * VEC], w);
        store_state_words(S + row + lane_state_index(sub, k), w);
#endif
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
#if VEC == 8
    unpack(*reinterpret_cast<const float4*>(p), f);
    unpack(*reinterpret_cast<const float4*>(p + 4), f + 4);
#else
    unpack(*reinterpret_cast<const state_vec*>(p), f);
#endif
}
template <typename H>
__device__ __forceinline__ void load_inputs(const H* p, float* f) {
#if VEC == 8
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    f[0] = to_f32(H{(unsigned short)(u.x & 0xffffu)});
    f[1] = to_f32(H{(unsigned short)(u.x >> 16)});
    f[2] = to_f32(H{(unsigned short)(u.y & 0xffffu)});
    f[3] = to_f32(H{(unsigned short)(u.y >> 16)});
    f[4] = to_f32(H{(unsigned short)(u.z & 0xffffu)});
    f[5] = to_f32(H{(unsigned short)(u.z >> 16)});
    f[6] = to_f32(H{(unsigned short)(u.w & 0xffffu)});
    f[7] = to_f32(H{(unsigned short)(u.w >> 16)});
#elif VEC == 4
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
