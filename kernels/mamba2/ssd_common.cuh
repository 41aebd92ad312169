// Shared pieces of the Mamba-2 SSD forward kernels (ssd_simt.cu, ssd_fused.cu):
// element types, the step-size transform, the work-item table, and thin wrappers
// over the PTX instructions the tensor-core kernel uses (ldmatrix, mma.sync,
// cp.async).
//
// Every wrapper has a host twin in ssd_emu.cuh: with SSD_EMULATE defined (by the
// host program ssd_emu_check.cu) the kernels compile with g++ and run on the CPU,
// one fiber per CUDA thread, so fragment layouts and index arithmetic can be
// checked without a GPU. NVRTC never sees that branch.
//
// Compile-time define shared by both kernels:
//   SSD_DTYPE   0: f32, 1: f16, 2: bf16 (storage type of x, dt, B, C, z, out)
#pragma once

#ifndef SSD_DTYPE
#error "ssd kernels need SSD_DTYPE (0 f32, 1 f16, 2 bf16)"
#endif

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

#if SSD_DTYPE == 0
typedef float elem_t;
#else
typedef u16 elem_t;  // raw bits of an f16 or bf16
#endif

#ifndef SSD_EMULATE
#define SSD_DEV __device__ __forceinline__
#else
#define SSD_DEV inline
#endif


#include "common/convert.cuh"
#include "common/math.cuh"
#include "common/smem.cuh"

// log2(e): decays are formed as exp2 of cumulative sums of dt' * A * log2(e).
#define SSD_LOG2E SSM_LOG2E

// Arguments of the forward kernels (ssd_fused_fwd, ssd_simt_fwd, and their
// state-only prepass builds), passed by value as one struct; mirrored field for
// field by `SsdArgs` in crates/mamba2-ssd/src/cuda/plan.rs, which asserts the
// same size. Absent optional tensors are null (the kernel is compiled without
// them and never reads them).
struct SsdArgs {
    const elem_t* x;        // (b, L, H, P)
    const elem_t* dt;       // (b, L, H)
    const float* A;         // (H)
    const elem_t* B;        // (b, L, G, N)
    const elem_t* C;        // (b, L, G, N)
    const float* dt_bias;   // (H) or null
    const float* D;         // (H) or (H, P) or null
    const elem_t* z;        // (b, L, H, P) or null
    const float* s0;        // (seqs, H, P, N) or null
    elem_t* out;            // (b, L, H, P)
    float* final_states;    // (seqs, H, P, N) or null
    float* ws_states;       // segment workspace: (slots, H, P, N)
    float* ws_decay;        // (slots, H)
    const float* cbw;       // C B^T tiles of ssd_chunk_cb, or null
    const i64* items;       // the work table (SSD_ITEM_FIELDS per item)
    int H;
    int G;
    float dt_min;
    float dt_max;
};
static_assert(sizeof(SsdArgs) == 136, "SsdArgs layout changed: update cuda/plan.rs");

// The fields of `args` as locals of the same names, for kernel bodies written
// against them (each kernel reads a subset).
#define SSD_UNPACK_ARGS(args)                                                   \
    [[maybe_unused]] const elem_t* const x = (args).x;                          \
    [[maybe_unused]] const elem_t* const dt = (args).dt;                        \
    [[maybe_unused]] const float* const A = (args).A;                           \
    [[maybe_unused]] const elem_t* const B = (args).B;                          \
    [[maybe_unused]] const elem_t* const C = (args).C;                          \
    [[maybe_unused]] const float* const dt_bias = (args).dt_bias;               \
    [[maybe_unused]] const float* const D = (args).D;                           \
    [[maybe_unused]] const elem_t* const z = (args).z;                          \
    [[maybe_unused]] const float* const s0 = (args).s0;                         \
    [[maybe_unused]] elem_t* const out = (args).out;                            \
    [[maybe_unused]] float* const final_states = (args).final_states;           \
    [[maybe_unused]] float* const ws_states = (args).ws_states;                 \
    [[maybe_unused]] float* const ws_decay = (args).ws_decay;                   \
    [[maybe_unused]] const float* const cbw = (args).cbw;                       \
    [[maybe_unused]] const i64* const items = (args).items;                     \
    [[maybe_unused]] const int H = (args).H;                                    \
    [[maybe_unused]] const int G = (args).G;                                    \
    [[maybe_unused]] const float dt_min = (args).dt_min;                        \
    [[maybe_unused]] const float dt_max = (args).dt_max

// ---------------------------------------------------------------------------
// Element conversions (kernels/common/convert.cuh: round to nearest even, as
// ssm_core::Element::from_f32).
// ---------------------------------------------------------------------------
SSD_DEV float elem_to_f32(float v) { return v; }
SSD_DEV float elem_to_f32(u16 v) {
#if SSD_DTYPE == 1
    return ssm_f16_bits_to_f32(v);
#else
    return ssm_bf16_bits_to_f32(v);
#endif
}

SSD_DEV u16 f32_to_elem16(float v) {
#if SSD_DTYPE == 1
    return ssm_f32_to_f16_bits(v);
#else
    return ssm_f32_to_bf16_bits(v);
#endif
}

#ifdef SSD_EMULATE
inline float emu_elem16(u16 b) { return elem_to_f32(b); }
#endif

SSD_DEV void store_elem(float* p, float v) { *p = v; }
SSD_DEV void store_elem(u16* p, float v) { *p = f32_to_elem16(v); }

// Two 16-bit elements in one 32-bit register: `lo` in the low half (the lower
// column index in every fragment layout below). On the device one
// cvt.rn.{bf16,f16}x2.f32 (its first source goes to the upper half) instead of two
// conversions, a shift and an or: the kernels pack ~70 pairs per warp and chunk.
// SSD_PACKED_CVT=0 keeps the scalar form (the v3 code) for comparison.
#ifndef SSD_PACKED_CVT
#define SSD_PACKED_CVT 1
#endif
SSD_DEV u32 pack2(float lo, float hi) {
#if !defined(SSD_EMULATE) && SSD_PACKED_CVT
#if SSD_DTYPE == 1
    return ssm_pack_f16x2(lo, hi);
#else
    return ssm_pack_bf16x2(lo, hi);
#endif
#else
    return ((u32)f32_to_elem16(hi) << 16) | (u32)f32_to_elem16(lo);
#endif
}
SSD_DEV float unpack_lo(u32 v) { return elem_to_f32((u16)(v & 0xffffu)); }
SSD_DEV float unpack_hi(u32 v) { return elem_to_f32((u16)(v >> 16)); }

// ---------------------------------------------------------------------------
// Step size (ssm_core::math::ssd_dt_f32): bias, softplus with threshold 20,
// clamp to [dt_min, dt_max].
// ---------------------------------------------------------------------------
SSD_DEV float ssd_dt(float raw, float bias, float dt_min, float dt_max) {
    float v = raw + bias;
#if SSD_DT_SOFTPLUS
    v = ssm_softplus(v);
#endif
    return fminf(fmaxf(v, dt_min), dt_max);
}

// The kernels' names for the shared math (kernels/common/math.cuh): 2^x on the
// special-function unit with denormal results flushed to zero (one MUFU.EX2), and
// silu in the exact form of ssm_core::math.
SSD_DEV float ssd_exp2(float x) { return ssm_exp2_ftz(x); }
SSD_DEV float silu(float z) { return ssm_silu(z); }

// Step 1's scan of one chunk on one warp (every forward kernel and the
// backward's chunk_decays form the same decays): lane `lane` holds rows
// j = lane V + v, v < V. Writes dt'_j = dt_prime(j, v) (0 for j >= clen, where
// dt_prime is not called) to dtp[v] and the lane's running sum of dt' A2
// through row j to pre[v], its total to run; returns the warp's inclusive scan
// of the totals, so that row j's log2 cumulative decay is incl - run + pre[v].
template <int V, typename DtPrime>
SSD_DEV float ssd_warp_cumsum(int lane, int clen, float A2, DtPrime dt_prime, float (&dtp)[V],
                              float (&pre)[V], float& run) {
    run = 0.0f;
#pragma unroll
    for (int v = 0; v < V; ++v) {
        const int j = lane * V + v;
        dtp[v] = j < clen ? dt_prime(j, v) : 0.0f;
        run += dtp[v] * A2;
        pre[v] = run;
    }
    float incl = run;
    for (int o = 1; o < 32; o <<= 1) {
        const float up = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += up;
    }
    return incl;
}

// ---------------------------------------------------------------------------
// Work items. Every block works on one item (a segment of one sequence) for one
// head and one tile of the head dimension. The host builds the table
// (crates/mamba2-ssd/src/cuda/work.rs); a plain batch is the varlen case with
// cu_seqlens = [0, L, 2L, ...].
// ---------------------------------------------------------------------------
#define SSD_ITEM_START 0    // first token of the segment in the packed (b*L) token axis
#define SSD_ITEM_LEN 1      // tokens in the segment (0 for an empty sequence)
#define SSD_ITEM_SEQ 2      // sequence index: row of initial/final states
#define SSD_ITEM_SEG 3      // index k of the segment within its sequence
#define SSD_ITEM_NSEG 4     // segments of the sequence
#define SSD_ITEM_WS 5       // workspace slot of the sequence's segment 0
#define SSD_ITEM_CHUNK 6    // index of the segment's first chunk in the chunk table
#define SSD_ITEM_FIELDS 7

// Tiles of 16 x 16 on or below the diagonal of a Q x Q chunk, row-major:
// tile (rt, jt), jt <= rt, is number rt (rt + 1) / 2 + jt. The C B^T workspace
// (ssd_chunk_cb.cu) stores each tile as 256 floats: for columns 0-7, then 8-15
// (two m16n8 tiles), 32 lanes x 4 floats in mma.sync accumulator order.
#define SSD_CB_TILE(rt, jt) ((rt) * ((rt) + 1) / 2 + (jt))

// The work item of a forward block (ssd_simt_fwd, ssd_fused_fwd): blockIdx.x
// runs over (item, head h, tile pt of the head dimension), NPT tiles per head
// fastest; declares bid, pt, h, the item's fields as locals and h's group g.
// Needs the locals of SSD_UNPACK_ARGS (items, H, G). A macro, as
// SSD_UNPACK_ARGS, so that both kernels read the table one way.
#define SSD_UNPACK_ITEM(NPT)                                         \
    const int bid = blockIdx.x;                                      \
    const int pt = bid % (NPT);                                      \
    const int h = (bid / (NPT)) % H;                                 \
    const i64 item = (i64)(bid / (NPT) / H) * SSD_ITEM_FIELDS;       \
    const i64 tok0 = items[item + SSD_ITEM_START];                   \
    const i64 len = items[item + SSD_ITEM_LEN];                      \
    [[maybe_unused]] const i64 seq = items[item + SSD_ITEM_SEQ];     \
    const int seg = (int)items[item + SSD_ITEM_SEG];                 \
    [[maybe_unused]] const int nseg = (int)items[item + SSD_ITEM_NSEG]; \
    const i64 ws0 = items[item + SSD_ITEM_WS]

// ---------------------------------------------------------------------------
// Tensor-core and async-copy wrappers (sm_80+ PTX; the fused kernel only).
// ---------------------------------------------------------------------------
#ifndef SSD_EMULATE
SSD_DEV u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
SSD_DEV void ldsm_x4(u32 r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}
SSD_DEV void ldsm_x4_trans(u32 r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}
// Two matrices; lanes 0..15 give the row addresses.
SSD_DEV void ldsm_x2_trans(u32 r[2], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(p))
                 : "memory");
}

// d += a * b for one m16n8k16 tile, f32 accumulate.
SSD_DEV void mma16816(float d[4], const u32 a[4], u32 b0, u32 b1) {
#if SSD_DTYPE == 1
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// 16-byte global -> shared copy; bytes past `src_bytes` (0 or 16) are zero-filled.
SSD_DEV void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(src_bytes)
                 : "memory");
}
// One 8-byte global store (p 8-byte aligned): two 32-bit words, `lo` first.
SSD_DEV void store_b32x2(void* p, u32 lo, u32 hi) {
    asm volatile("st.global.v2.b32 [%0], {%1, %2};\n" ::"l"(p), "r"(lo), "r"(hi) : "memory");
}
// One 16-byte global store (p 16-byte aligned).
SSD_DEV void store_b32x4(void* p, uint4 v) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(v.x), "r"(v.y),
                 "r"(v.z), "r"(v.w)
                 : "memory");
}
SSD_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int PENDING>
SSD_DEV void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}
#endif
