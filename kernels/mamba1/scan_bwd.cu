// Mamba-1 selective scan, backward (docs/BACKWARD-MAMBA1.md; layouts docs/DESIGN.md §2;
// the kernel's design and measured versions: docs/kernels/mamba1-scan-bwd.md).
//
// Four kernels, launched in this order by crates/mamba1-scan/src/cuda/backward.rs:
//
//   mamba1_scan_bwd_ckpt    the forward recurrence again, writing only the state
//                           entering each time tile of SCAN_BT steps (the
//                           checkpoints: N floats per channel and tile).
//   mamba1_scan_bwd         per tile, last to first: recompute the tile's states
//                           from its checkpoint (held in registers with the
//                           decays), sweep it in reverse with the adjoint `lam`
//                           carried from the tile after it, and write du, ddelta,
//                           dz; the block's partial sums of dB/dC (over its
//                           channels) and of dA, dD, ddelta_bias, constant dB/dC
//                           (over time) go to scratch.
//   mamba1_scan_bwd_sm      (v5, kernels/mamba1/scan_bwd_slices.cuh) the same
//                           sweep with a warp per slice of states of 32
//                           channels: launched instead of mamba1_scan_bwd
//                           when the host compiles it (SCAN_SL_NPT).
//   mamba1_scan_bwd_reduce_bc      grouped dB/dC: the blocks' partials of one
//                                  group added in channel-block order.
//   mamba1_scan_bwd_reduce_params  dA, dD, ddelta_bias, constant dB/dC: the
//                                  sequences' partials added in sequence order.
//
// No float atomics anywhere: every sum has an order fixed by the problem and
// the compile-time tiling, so reruns are bit-identical.
//
// Block geometry: as the forward (kernels/mamba1/scan_fwd.cu), a block owns
// SCAN_CPB channels of one sequence inside one B group and one C group. In the
// sweep, thread tid is lane `slice = tid % SCAN_TPC` of channel `tid / SCAN_TPC`
// and holds states slice*NPT .. +NPT of it; the checkpoint kernel runs the same
// channels with SCAN_CK_TPC lanes of SCAN_CK_NPT states each (fewer, wider lanes:
// it keeps no tile in registers, so it can amortise each shared-memory read over
// more states). The lanes of a channel are adjacent, so a warp's reads of the
// per-step values and of the B/C rows are broadcasts across its channels.
// A thread's (channel, step) items are its own channel's steps
// t = slice + TPC*it: it stages their inputs and runs their epilogue.
//
// v3 (this version) against v2 (commit dd87733, kernels ee313d24; rebuild it
// with `git checkout dd87733 -- kernels/mamba1/scan_bwd.cu
// crates/mamba1-scan/src/cuda/backward.rs kernels/mamba1/scan_bwd_emu_check.cu`):
// per-step values packed as one float4 {dt, dt*u, gy, u} and B/C interleaved per
// state, so a lane reads a step's inputs in two vector loads instead of seven
// scalar ones; the lanes' partial sums read back as float4 (swizzled against
// bank conflicts); dB/dC of a block reduced from lam and h (the reduction
// multiplies by dt*u and gy: two fewer multiplies per state and step in the
// sweep) with float4 reads; the staging double-buffered, so a tile needs two
// barriers instead of three (the checkpoint kernel one instead of two).
//
// Positions of a tile past the sequence get dt = u = gy = 0: the step is an exact
// identity for the state (2^0 = 1, h + 0) and for the adjoint (lam * 1 + C * 0),
// and adds 0 to every sum; nothing is written there (those positions belong to
// the next sequence).
//
// Compile-time configuration (-D): SCAN_DTYPE (0 f32, 1 f16, 2 bf16), SCAN_N,
// SCAN_TPC, SCAN_NPT, SCAN_THREADS, SCAN_BT, SCAN_CK_TPC, SCAN_CK_NPT, and the
// 0/1 flags SCAN_HAS_BIAS, SCAN_SOFTPLUS, SCAN_HAS_D, SCAN_HAS_Z, SCAN_B_CONST,
// SCAN_C_CONST, SCAN_LEAN (the 6-blocks-per-SM sweep: fewer registers and
// 1 KB less shared memory per block, the same arithmetic). The host mirrors the shared-memory layouts (SCAN_BWD_SMEM_BYTES
// and SCAN_CKPT_SMEM_BYTES are checked against them).
#include "scan_math.cuh"  // the forward's softplus and silu, so dt is recomputed bit for bit

#if !defined(SCAN_N) || !defined(SCAN_TPC) || !defined(SCAN_NPT) || !defined(SCAN_THREADS) || \
    !defined(SCAN_BT) || !defined(SCAN_CK_TPC) || !defined(SCAN_CK_NPT)
#error "SCAN_N, SCAN_TPC, SCAN_NPT, SCAN_THREADS, SCAN_BT, SCAN_CK_TPC and SCAN_CK_NPT must be defined"
#endif

#define SCAN_CPB (SCAN_THREADS / SCAN_TPC)  // channels per block
#define SCAN_NP (SCAN_TPC * SCAN_NPT)       // N padded to the lanes' slices
#define SCAN_IPT ((SCAN_BT + SCAN_TPC - 1) / SCAN_TPC)  // items per thread
#define SCAN_BC_GROUPED ((SCAN_B_CONST ? 0 : 1) + (SCAN_C_CONST ? 0 : 1))
// Per-parameter partial sums of one (sequence, channel) in part_params.
#define SCAN_PARAMS (3 * SCAN_N + 2)
#define SCAN_R4(x) (((x) + 3) / 4 * 4)  // floats, rounded up to 16 bytes

#define SCAN_CK_THREADS (SCAN_CPB * SCAN_CK_TPC)
#define SCAN_CK_NP (SCAN_CK_TPC * SCAN_CK_NPT)
#define SCAN_CK_IPT ((SCAN_BT + SCAN_CK_TPC - 1) / SCAN_CK_TPC)

#if SCAN_THREADS % SCAN_TPC != 0 || 32 % SCAN_TPC != 0 || 32 % SCAN_CK_TPC != 0
#error "SCAN_TPC and SCAN_CK_TPC must be powers of two dividing 32 (and SCAN_THREADS)"
#endif
#if SCAN_NP < SCAN_N || SCAN_CK_NP < SCAN_N
#error "SCAN_TPC * SCAN_NPT and SCAN_CK_TPC * SCAN_CK_NPT must cover SCAN_N"
#endif

// Shared memory of mamba1_scan_bwd, in floats (every region 16-byte aligned):
//   el     [2][CPB][ELS]   per (channel, step) float4 {dt, dt*u, gy, u}; two
//                          buffers: tile k-1 is staged while tile k is reduced
//   bc     [2][BT][BCW]    the grouped B and/or C rows, interleaved per state
//                          ({B_n, C_n} when both are grouped)
//   part   [3][CPB][PCH]   the lanes' partial sums of y, <lam, B>, <A, w> per
//                          step: row t holds TPC floats (swizzled, see bw_pslot)
//   dbc    [G][BT][DTS]    lam_t (for dB) and h_t (for dC) of every (channel,
//                          state), when grouped: [t][channel][state]
// ELS pads each channel by 4 floats so that a warp's channels read distinct
// banks; BCW by 4 floats against the staging stores' conflicts; PCH so that
// a warp's channels write distinct banks; DTS so that two steps' rows fall on
// the two halves of the banks for the reduction's float4 reads.
#define SCAN_ELS (4 * SCAN_BT + 4)
#define SCAN_SM_EL (SCAN_CPB * SCAN_ELS)
#define SCAN_BCW (SCAN_BC_GROUPED * SCAN_NP + 4)
#define SCAN_SM_BC (SCAN_BC_GROUPED > 0 ? SCAN_R4(SCAN_BT * SCAN_BCW) : 0)
#if SCAN_TPC >= 4
#define SCAN_PCH (SCAN_BT * SCAN_TPC + (SCAN_TPC + 32 - (SCAN_BT * SCAN_TPC) % 32) % 32)
#else
#define SCAN_PCH (SCAN_BT * SCAN_TPC + 1)
#endif
#define SCAN_SM_PART SCAN_R4(3 * SCAN_CPB * SCAN_PCH)
#ifndef SCAN_LEAN
#define SCAN_LEAN 0
#endif
#if SCAN_LEAN
// Lean (6 blocks per SM need 1 KB less per block): rows unpadded, and odd
// steps' rows swizzled instead (float offset bit 4 flipped: the same half-bank
// shift the pad gives, within the row).
#if SCAN_R4(SCAN_CPB * SCAN_NP) % 32 != 0
#error "SCAN_LEAN needs rows of dbc a multiple of 32 floats"
#endif
#define SCAN_DTS SCAN_R4(SCAN_CPB * SCAN_NP)
#define SCAN_DBC_SWZ(t) (((t) & 1) << 4)
#else
#define SCAN_DTS (SCAN_R4(SCAN_CPB * SCAN_NP) + 16)
#define SCAN_DBC_SWZ(t) 0
#endif
#define SCAN_SM_DBC (SCAN_BC_GROUPED * SCAN_BT * SCAN_DTS)
#define SCAN_SM_FLOATS (2 * SCAN_SM_EL + 2 * SCAN_SM_BC + SCAN_SM_PART + SCAN_SM_DBC)
// Shared memory of mamba1_scan_bwd_ckpt: [2][CPB][CK_ELS] float2 {dt, dt*u}, then
// (grouped B) [2][BT][CK_BW] B rows.
#define SCAN_CK_ELS (2 * SCAN_BT + 2)
#define SCAN_CK_SM_EL SCAN_R4(SCAN_CPB * SCAN_CK_ELS)
#define SCAN_CK_BW (SCAN_CK_NP + 4)
#define SCAN_CK_SM_B (SCAN_B_CONST ? 0 : SCAN_R4(SCAN_BT * SCAN_CK_BW))
#define SCAN_CKPT_FLOATS (2 * SCAN_CK_SM_EL + 2 * SCAN_CK_SM_B)
#if defined(SCAN_BWD_SMEM_BYTES) && SCAN_BWD_SMEM_BYTES != SCAN_SM_FLOATS * 4
#error "the host's shared-memory size differs from the kernel's layout"
#endif
#if defined(SCAN_CKPT_SMEM_BYTES) && SCAN_CKPT_SMEM_BYTES != SCAN_CKPT_FLOATS * 4
#error "the host's checkpoint-kernel shared-memory size differs from the kernel's layout"
#endif
// (state, step) pairs of a tile's B/C rows per thread, when staging them.
#define SCAN_ROW_ITERS ((SCAN_NP * SCAN_BT + SCAN_THREADS - 1) / SCAN_THREADS)
#define SCAN_CK_ROW_ITERS ((SCAN_CK_NP * SCAN_BT + SCAN_CK_THREADS - 1) / SCAN_CK_THREADS)
#ifndef SCAN_MIN_BLOCKS
#define SCAN_MIN_BLOCKS 1
#endif
#ifndef SCAN_CK_MIN_BLOCKS
#define SCAN_CK_MIN_BLOCKS 1
#endif

#if SCAN_DTYPE == 0
typedef float scan_elem_t;
#elif SCAN_DTYPE == 1 || SCAN_DTYPE == 2
typedef unsigned short scan_elem_t;
#else
#error "SCAN_DTYPE must be 0 (f32), 1 (f16) or 2 (bf16)"
#endif

#ifndef SSM_EMULATE
#define SCAN_DEV __device__ __forceinline__
typedef float2 bw_v2;
#else
#define SCAN_DEV inline
struct alignas(8) bw_v2 {
    float x, y;
};
#endif
typedef float4 bw_v4;

SCAN_DEV float bw_load(const scan_elem_t* p, long long i) {
#if SCAN_DTYPE == 0
    return p[i];
#elif SCAN_DTYPE == 1
    return ssm_f16x2_lo((unsigned)p[i]);
#else
    return ssm_bf16x2_lo((unsigned)p[i]);
#endif
}

SCAN_DEV void bw_store(scan_elem_t* p, long long i, float x) {
#if SCAN_DTYPE == 0
    p[i] = x;
#elif SCAN_DTYPE == 1
    p[i] = (scan_elem_t)(ssm_pack_f16x2(x, 0.0f) & 0xffffu);
#else
    p[i] = (scan_elem_t)(ssm_pack_bf16x2(x, 0.0f) & 0xffffu);
#endif
}

SCAN_DEV float bw_sigmoid(float x) { return scan_rcp(1.0f + scan_exp_elem(-x)); }

// K consecutive floats from (to) p, in the widest vectors K allows; p is aligned
// to that width (the callers' layouts guarantee it: see each call).
template <int K>
SCAN_DEV void bw_get(float* v, const float* p) {
    if (K % 4 == 0) {
#pragma unroll
        for (int i = 0; i < K; i += 4) {
            const bw_v4 f = *reinterpret_cast<const bw_v4*>(p + i);
            v[i] = f.x, v[i + 1] = f.y, v[i + 2] = f.z, v[i + 3] = f.w;
        }
    } else if (K % 2 == 0) {
#pragma unroll
        for (int i = 0; i < K; i += 2) {
            const bw_v2 f = *reinterpret_cast<const bw_v2*>(p + i);
            v[i] = f.x, v[i + 1] = f.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < K; ++i) v[i] = p[i];
    }
}

template <int K>
SCAN_DEV void bw_put(float* p, const float* v) {
    if (K % 4 == 0) {
#pragma unroll
        for (int i = 0; i < K; i += 4) {
            bw_v4 f;
            f.x = v[i], f.y = v[i + 1], f.z = v[i + 2], f.w = v[i + 3];
            *reinterpret_cast<bw_v4*>(p + i) = f;
        }
    } else if (K % 2 == 0) {
#pragma unroll
        for (int i = 0; i < K; i += 2) {
            bw_v2 f;
            f.x = v[i], f.y = v[i + 1];
            *reinterpret_cast<bw_v2*>(p + i) = f;
        }
    } else {
#pragma unroll
        for (int i = 0; i < K; ++i) p[i] = v[i];
    }
}

// Kernel arguments, passed by value; mirrored by `ScanBwdArgs` in
// crates/mamba1-scan/src/cuda/backward.rs (every field 8 bytes, no padding).
struct ScanBwdArgs {
    const scan_elem_t* u;          // (b, D_in, L)
    const scan_elem_t* delta;      // (b, D_in, L)
    const float* A;                // (D_in, N)
    const scan_elem_t* B;          // (b, G_B, N, L) or (D_in, N)
    const scan_elem_t* C;          // (b, G_C, N, L) or (D_in, N)
    const float* D;                // (D_in) or null
    const scan_elem_t* z;          // (b, D_in, L) or null
    const float* delta_bias;       // (D_in) or null
    const float* initial_states;   // (seqs, D_in, N) or null
    const long long* cu_seqlens;   // (seqs + 1) or null: checked copy (check_offsets)
    const scan_elem_t* d_out;      // (b, D_in, L)
    const float* d_final_states;   // (seqs, D_in, N) or null
    float* ckpt;                   // (rows, D_in, ckpt_slots, N)
    scan_elem_t* du;               // (b, D_in, L)
    scan_elem_t* ddelta;           // (b, D_in, L)
    scan_elem_t* dz;               // (b, D_in, L) or null
    float* dinitial_states;        // (seqs, D_in, N) or null
    float* part_b;                 // grouped: (rows, blocks_per_seq, N, L), else null
    float* part_c;                 // as part_b
    float* part_params;            // (seqs, D_in, SCAN_PARAMS)
    scan_elem_t* dB;               // final grouped or constant dB
    scan_elem_t* dC;
    float* dA;                     // (D_in, N)
    float* dD;                     // (D_in) or null
    float* ddelta_bias;            // (D_in) or null
    long long d_inner;
    long long seqlen;
    long long groups_b;            // 1 when B is constant
    long long groups_c;
    long long seg_channels;        // channels sharing one B group and one C group
    long long blocks_per_seg;      // ceil(seg_channels / CPB)
    long long blocks_per_seq;      // (D_in / seg_channels) * blocks_per_seg
    long long num_seqs;
    long long ckpt_slots;          // checkpoint slots per (row, channel)
};
static_assert(sizeof(ScanBwdArgs) == 34 * 8, "ScanBwdArgs layout changed: update backward.rs");

// Bits of the status word (the forward's, crates/mamba1-scan/src/cuda/launch.rs).
#define SCAN_STATUS_BAD_CU_SEQLENS 1u

// Which sequence, channels and positions a block of CPB channels owns (the
// sweep's and the checkpoint kernel's blocks: SCAN_CPB; the slice-major sweep's:
// 32).
struct BwBlock {
    long long seq, row, lo, hi, c0, cb, gb, gc, slot0;
    int nch;
};

template <int CPB>
SCAN_DEV BwBlock bw_block_of(const ScanBwdArgs& a, long long block) {
    BwBlock b;
    b.seq = block / a.blocks_per_seq;
    b.cb = block - b.seq * a.blocks_per_seq;
    const long long seg = b.cb / a.blocks_per_seg;
    const long long first_in_seg = (b.cb - seg * a.blocks_per_seg) * CPB;
    b.c0 = seg * a.seg_channels + first_in_seg;
    const long long left = a.seg_channels - first_in_seg;
    b.nch = (int)(left < CPB ? left : CPB);
    if (a.cu_seqlens != nullptr) {
        b.row = 0;
        b.lo = a.cu_seqlens[b.seq];
        b.hi = a.cu_seqlens[b.seq + 1];
        // Slots of sequence s start at lo / BT + s: disjoint from the next
        // sequence's, since a sequence of length len has at most
        // hi / BT - lo / BT + 1 tiles.
        b.slot0 = b.lo / SCAN_BT + b.seq;
    } else {
        b.row = b.seq;
        b.lo = 0;
        b.hi = a.seqlen;
        b.slot0 = 0;
    }
    b.gb = b.c0 / (a.d_inner / a.groups_b);
    b.gc = b.c0 / (a.d_inner / a.groups_c);
    return b;
}
SCAN_DEV BwBlock bw_block(const ScanBwdArgs& a, long long block) {
    return bw_block_of<SCAN_CPB>(a, block);
}

// dt of one input (bias, softplus), as the forward forms it.
SCAN_DEV float bw_dt(float x) {
#if SCAN_SOFTPLUS
    return scan_softplus(x);
#else
    return x;
#endif
}


// Where lane s's partial sum of step t lives in a channel's row of `part`. The
// epilogue of item (channel, t) reads the row's TPC floats as float4 chunks,
// and the TPC / 4 items a phase of 8 threads reads hit different banks only if
// the chunks of successive rows rotate: chunk c of row t sits at c ^ swz(t).
SCAN_DEV int bw_pslot(int t, int s) {
#if SCAN_TPC >= 4
    const int swz = ((t * SCAN_TPC) >> 5) & (SCAN_TPC / 4 - 1);
    return t * SCAN_TPC + ((((s >> 2) ^ swz)) << 2) + (s & 3);
#else
    return t * SCAN_TPC + s;
#endif
}

// One tile's raw elementwise inputs of a thread's items, fetched ahead.
template <int IPT>
struct BwItems {
    float x[IPT];  // delta (+ bias in the consumer)
    float u[IPT];
    float g[IPT];  // d_out (sweep only)
    float z[IPT];  // z (sweep with z only)
    bool ok[IPT];  // inside the block's channels and the sequence
};

// Items of thread (ch, slice) with TPC lanes per channel: steps slice + TPC*it.
template <bool SWEEP, int IPT, int TPC>
SCAN_DEV void bw_fetch_items(BwItems<IPT>& q, const ScanBwdArgs& a, const BwBlock& blk, int ch,
                             int slice, long long start) {
#pragma unroll
    for (int it = 0; it < IPT; ++it) {
        const int t = slice + TPC * it;
        const long long pos = start + t;
        q.ok[it] = t < SCAN_BT && ch < blk.nch && pos < blk.hi;
        q.x[it] = q.u[it] = q.g[it] = q.z[it] = 0.0f;
        if (q.ok[it]) {
            const long long at = (blk.row * a.d_inner + blk.c0 + ch) * a.seqlen + pos;
            q.x[it] = bw_load(a.delta, at);
            q.u[it] = bw_load(a.u, at);
            if (SWEEP) {
                q.g[it] = bw_load(a.d_out, at);
#if SCAN_HAS_Z
                q.z[it] = bw_load(a.z, at);
#endif
            }
        }
    }
}

// A thread's share of one tile's B or C rows (every (state, step) of the
// padded rows: zero past N and past the sequence), fetched ahead into
// registers; pair j is (state j / BT, step j % BT), steps fastest so that the
// global loads run along a row.
template <int ITERS, int NPAD, int THREADS>
SCAN_DEV void bw_fetch_rows(float (&q)[ITERS], const scan_elem_t* src, long long start,
                            long long hi, long long L) {
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
        const int j = threadIdx.x + it * THREADS;
        const int n = j / SCAN_BT;
        const long long pos = start + (j - n * SCAN_BT);
        q[it] = (n < SCAN_N && pos < hi) ? bw_load(src, (long long)n * L + pos) : 0.0f;
    }
}

// ... and into shared memory at rows[t * width + n * stride] (pairs past the
// padded rows are skipped).
template <int ITERS, int NPAD, int THREADS>
SCAN_DEV void bw_put_rows(float* rows, int width, int stride, const float (&q)[ITERS]) {
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
        const int j = threadIdx.x + it * THREADS;
        const int n = j / SCAN_BT;
        if (j < NPAD * SCAN_BT) rows[(j - n * SCAN_BT) * width + n * stride] = q[it];
    }
}

// ---- 1. checkpoints: the state entering each tile of each (sequence, channel).
// One barrier per tile: tile k+1 is staged into the other buffer after tile k's
// steps, with its loads in flight during them. (Slice-major lanes, thread tid
// being channel tid % CPB, with items staged along the channels' rows, measured
// 20% slower on the H200: docs/kernels/mamba1-scan-bwd.md, v3.)
extern "C" __global__ void __launch_bounds__(SCAN_CK_THREADS, SCAN_CK_MIN_BLOCKS)
    mamba1_scan_bwd_ckpt(const ScanBwdArgs args) {
    SSM_DYNAMIC_SMEM(scan_smem);
    float* s_el = reinterpret_cast<float*>(scan_smem);  // [2][CPB][CK_ELS]
#if !SCAN_B_CONST
    float* s_B = s_el + 2 * SCAN_CK_SM_EL;  // [2][BT][CK_BW]
#endif
    const long long L = args.seqlen, Din = args.d_inner;
    (void)L;
    const BwBlock blk = bw_block(args, blockIdx.x);
    const int tid = threadIdx.x;
    const int ch = tid / SCAN_CK_TPC, slice = tid % SCAN_CK_TPC;
    const long long chan = blk.c0 + ch;
    const bool live = ch < blk.nch;

    float A2[SCAN_CK_NPT], h[SCAN_CK_NPT];
#if SCAN_B_CONST
    float Breg[SCAN_CK_NPT];
#endif
#pragma unroll
    for (int i = 0; i < SCAN_CK_NPT; ++i) {
        const int n = slice * SCAN_CK_NPT + i;
        const bool real = live && n < SCAN_N;
        A2[i] = real ? args.A[chan * SCAN_N + n] * SSM_LOG2E : 0.0f;
        h[i] = (real && args.initial_states != nullptr)
                   ? args.initial_states[(blk.seq * Din + chan) * SCAN_N + n]
                   : 0.0f;
#if SCAN_B_CONST
        Breg[i] = real ? bw_load(args.B, chan * SCAN_N + n) : 0.0f;
#endif
    }
    const long long len = blk.hi - blk.lo;
    const long long tiles = (len + SCAN_BT - 1) / SCAN_BT;
    float* ck = args.ckpt + ((blk.row * Din + chan) * args.ckpt_slots + blk.slot0) * SCAN_N;
#if !SCAN_B_CONST
    const scan_elem_t* Bsrc = args.B + ((blk.row * args.groups_b + blk.gb) * SCAN_N) * L;
    float qB[SCAN_CK_ROW_ITERS];
#endif
    BwItems<SCAN_CK_IPT> q;
    // Stage the tile at `start` (fetched into q, qB) into buffer `buf`.
    auto stage = [&](int buf) {
        float* el = s_el + buf * SCAN_CK_SM_EL + ch * SCAN_CK_ELS;
#pragma unroll
        for (int it = 0; it < SCAN_CK_IPT; ++it) {
            const int t = slice + SCAN_CK_TPC * it;
            bw_v2 v;
            v.x = v.y = 0.0f;
            if (q.ok[it]) {
                float x = q.x[it];
#if SCAN_HAS_BIAS
                x += args.delta_bias[chan];
#endif
                v.x = bw_dt(x);
                v.y = v.x * q.u[it];
            }
            if (t < SCAN_BT) *reinterpret_cast<bw_v2*>(el + 2 * t) = v;
        }
#if !SCAN_B_CONST
        bw_put_rows<SCAN_CK_ROW_ITERS, SCAN_CK_NP, SCAN_CK_THREADS>(
            s_B + buf * SCAN_CK_SM_B, SCAN_CK_BW, 1, qB);
#endif
    };
    if (tiles > 0) {
        bw_fetch_items<false, SCAN_CK_IPT, SCAN_CK_TPC>(q, args, blk, ch, slice, blk.lo);
#if !SCAN_B_CONST
        bw_fetch_rows<SCAN_CK_ROW_ITERS, SCAN_CK_NP, SCAN_CK_THREADS>(qB, Bsrc, blk.lo, blk.hi, L);
#endif
        stage(0);
    }
    for (long long k = 0; k < tiles; ++k) {
        const int buf = (int)(k & 1);
        const long long start = blk.lo + k * SCAN_BT;
        __syncthreads();  // tile k staged; tile k-1's reads of the other buffer done
        if (k + 1 < tiles) {
            bw_fetch_items<false, SCAN_CK_IPT, SCAN_CK_TPC>(q, args, blk, ch, slice,
                                                            start + SCAN_BT);
#if !SCAN_B_CONST
            bw_fetch_rows<SCAN_CK_ROW_ITERS, SCAN_CK_NP, SCAN_CK_THREADS>(
                qB, Bsrc, start + SCAN_BT, blk.hi, L);
#endif
        }
        if (live) {
            if (SCAN_CK_NP == SCAN_N) {
                // Whole rows: the lane's states are contiguous and aligned to
                // CK_NPT floats (the slot's offset is a multiple of N).
                bw_put<SCAN_CK_NPT>(ck + k * SCAN_N + slice * SCAN_CK_NPT, h);
            } else {
#pragma unroll
                for (int i = 0; i < SCAN_CK_NPT; ++i) {
                    const int n = slice * SCAN_CK_NPT + i;
                    if (n < SCAN_N) ck[k * SCAN_N + n] = h[i];
                }
            }
        }
        const float* el = s_el + buf * SCAN_CK_SM_EL + ch * SCAN_CK_ELS;
#if !SCAN_B_CONST
        const float* brow = s_B + buf * SCAN_CK_SM_B + slice * SCAN_CK_NPT;
#endif
#pragma unroll
        for (int t = 0; t < SCAN_BT; ++t) {
            const bw_v2 d = *reinterpret_cast<const bw_v2*>(el + 2 * t);
#if SCAN_B_CONST
            const float* b = Breg;
#else
            // CK_BW and the lane's offset are multiples of CK_NPT's vector width.
            float b[SCAN_CK_NPT];
            bw_get<SCAN_CK_NPT>(b, brow + t * SCAN_CK_BW);
#endif
#pragma unroll
            for (int i = 0; i < SCAN_CK_NPT; ++i)
                h[i] = fmaf(ssm_exp2_ftz(d.x * A2[i]), h[i], d.y * b[i]);
        }
        if (k + 1 < tiles) stage(buf ^ 1);
    }
}

// ---- 2. the reverse sweep. Per tile (last to first), two barriers:
//   A  tile k staged (el/bc buffer k & 1); tile k+1's epilogue and dB/dC
//      reduction are done with `part` and `dbc`.
//      Then: tile k-1's loads issued; recompute tile k (states, decays, y
//      partials); reverse sweep (lam, <lam, B>, <A, w> partials, lam and h_t
//      for dB/dC).
//   B  every lane's partials of tile k are in shared memory.
//      Then: tile k's epilogue (du, ddelta, dz) and dB/dC reduction; tile k-1
//      staged into the other buffer.
extern "C" __global__ void __launch_bounds__(SCAN_THREADS, SCAN_MIN_BLOCKS)
    mamba1_scan_bwd(const ScanBwdArgs args) {
    SSM_DYNAMIC_SMEM(scan_smem);
    float* s_el = reinterpret_cast<float*>(scan_smem);  // [2][CPB][ELS]
    float* s_bc = s_el + 2 * SCAN_SM_EL;                // [2][BT][BCW]
    float* s_part = s_bc + 2 * SCAN_SM_BC;              // [3][CPB][PCH]
#if SCAN_BC_GROUPED > 0
    float* s_dbc = s_part + SCAN_SM_PART;  // [G][BT][DTS]
    constexpr int OFF_C = SCAN_B_CONST ? 0 : 1;  // C's place in a state's pair
#endif

    const long long L = args.seqlen, Din = args.d_inner;
    const BwBlock blk = bw_block(args, blockIdx.x);
    const int tid = threadIdx.x;
    const int ch = tid / SCAN_TPC, slice = tid % SCAN_TPC;
    const long long chan = blk.c0 + ch;
    const bool live = ch < blk.nch;
    // B/C values of a lane's state i in a row of bc: K = NPT * G floats per lane.
#define SCAN_BCK (SCAN_BC_GROUPED > 0 ? SCAN_BC_GROUPED : 1)
#if SCAN_BC_GROUPED > 0
    constexpr int K = SCAN_NPT * SCAN_BCK;
#endif

    float Av[SCAN_NPT], A2[SCAN_NPT], lam[SCAN_NPT], dA[SCAN_NPT];
#if SCAN_B_CONST
    float Breg[SCAN_NPT], dBc[SCAN_NPT];
#endif
#if SCAN_C_CONST
    float Creg[SCAN_NPT], dCc[SCAN_NPT];
#endif
#pragma unroll
    for (int i = 0; i < SCAN_NPT; ++i) {
        const int n = slice * SCAN_NPT + i;
        const bool real = live && n < SCAN_N;
        const long long an = chan * SCAN_N + n;
        Av[i] = real ? args.A[an] : 0.0f;
        A2[i] = Av[i] * SSM_LOG2E;
        lam[i] = (real && args.d_final_states != nullptr)
                     ? args.d_final_states[(blk.seq * Din + chan) * SCAN_N + n]
                     : 0.0f;
        dA[i] = 0.0f;
#if SCAN_B_CONST
        Breg[i] = real ? bw_load(args.B, an) : 0.0f;
        dBc[i] = 0.0f;
#endif
#if SCAN_C_CONST
        Creg[i] = real ? bw_load(args.C, an) : 0.0f;
        dCc[i] = 0.0f;
#endif
    }
    // Per-item parameters and running sums over time (a thread's items are steps
    // of its own channel).
#if SCAN_HAS_D
    const float eD = live ? args.D[chan] : 0.0f;
    float sumD[SCAN_IPT];
#endif
#if SCAN_HAS_BIAS
    const float ebias = live ? args.delta_bias[chan] : 0.0f;
    float sumBias[SCAN_IPT];
#endif
#pragma unroll
    for (int it = 0; it < SCAN_IPT; ++it) {
#if SCAN_HAS_D
        sumD[it] = 0.0f;
#endif
#if SCAN_HAS_BIAS
        sumBias[it] = 0.0f;
#endif
    }

    const long long len = blk.hi - blk.lo;
    const long long tiles = (len + SCAN_BT - 1) / SCAN_BT;
    const float* ck = args.ckpt + ((blk.row * Din + chan) * args.ckpt_slots + blk.slot0) * SCAN_N;
#if !SCAN_B_CONST
    const scan_elem_t* Bsrc = args.B + ((blk.row * args.groups_b + blk.gb) * SCAN_N) * L;
    float qB[SCAN_ROW_ITERS];
#endif
#if !SCAN_C_CONST
    const scan_elem_t* Csrc = args.C + ((blk.row * args.groups_c + blk.gc) * SCAN_N) * L;
    float qC[SCAN_ROW_ITERS];
#endif
    BwItems<SCAN_IPT> q;
    float qh[SCAN_NPT], h[SCAN_NPT];
    // Each item's values of the staged tile, kept for its epilogue.
#if SCAN_LEAN
    // Lean: dt, gy and u are read back from the staged float4; only what it
    // lacks stays in registers, folded at staging: the softplus derivative
    // (1 past the threshold, where the forward takes dt = x) and, with z,
    // d_out and the silu derivative factor.
    float esp[SCAN_IPT], eg[SCAN_IPT], ef[SCAN_IPT];
#else
    float ex[SCAN_IPT], eu[SCAN_IPT], eg[SCAN_IPT], ez[SCAN_IPT], edt[SCAN_IPT], egy[SCAN_IPT];
#if SCAN_HAS_Z
    float esz[SCAN_IPT];  // sigmoid(z): silu(z) = z sigmoid(z) as the forward forms it
#endif
#endif
    bool eok[SCAN_IPT];

    auto fetch = [&](long long start, long long k) {
        bw_fetch_items<true, SCAN_IPT, SCAN_TPC>(q, args, blk, ch, slice, start);
#if !SCAN_B_CONST
        bw_fetch_rows<SCAN_ROW_ITERS, SCAN_NP, SCAN_THREADS>(qB, Bsrc, start, blk.hi, L);
#endif
#if !SCAN_C_CONST
        bw_fetch_rows<SCAN_ROW_ITERS, SCAN_NP, SCAN_THREADS>(qC, Csrc, start, blk.hi, L);
#endif
#pragma unroll
        for (int i = 0; i < SCAN_NPT; ++i) {
            const int n = slice * SCAN_NPT + i;
            qh[i] = (live && n < SCAN_N) ? ck[k * SCAN_N + n] : 0.0f;
        }
    };
    auto stage = [&](int buf) {
        float* el = s_el + buf * SCAN_SM_EL + ch * SCAN_ELS;
#pragma unroll
        for (int it = 0; it < SCAN_IPT; ++it) {
            const int t = slice + SCAN_TPC * it;
#if SCAN_LEAN
            float ex[1], eu[1], ez[1], edt[1], egy[1], esz[1];
#define SCAN_EI 0  // the item's index into the locals above
            esp[it] = ef[it] = 0.0f;
#else
#define SCAN_EI it
#endif
            ex[SCAN_EI] = eu[SCAN_EI] = eg[it] = ez[SCAN_EI] = edt[SCAN_EI] = egy[SCAN_EI] = 0.0f;
#if SCAN_HAS_Z || SCAN_LEAN
            esz[SCAN_EI] = 0.0f;
#endif
            eok[it] = q.ok[it];
            if (q.ok[it]) {
                float x = q.x[it];
#if SCAN_HAS_BIAS
                x += ebias;
#endif
                ex[SCAN_EI] = x;
                edt[SCAN_EI] = bw_dt(x);
                eu[SCAN_EI] = q.u[it];
                eg[it] = q.g[it];
#if SCAN_HAS_Z
                ez[SCAN_EI] = q.z[it];
                esz[SCAN_EI] = bw_sigmoid(ez[SCAN_EI]);  // scan_silu(z) is z * this, bit for bit
                egy[SCAN_EI] = eg[it] * (ez[SCAN_EI] * esz[SCAN_EI]);
#else
                egy[SCAN_EI] = eg[it];
#endif
#if SCAN_LEAN
                // The same values the full epilogue forms (ddt * 1 is ddt).
#if SCAN_SOFTPLUS
                esp[it] = ex[0] > 20.0f ? 1.0f : bw_sigmoid(ex[0]);
#endif
#if SCAN_HAS_Z
                ef[it] = esz[0] * (1.0f + ez[0] * (1.0f - esz[0]));
#endif
#endif
            }
            if (t < SCAN_BT) {
                bw_v4 v;
                v.x = edt[SCAN_EI], v.y = edt[SCAN_EI] * eu[SCAN_EI], v.z = egy[SCAN_EI],
                v.w = eu[SCAN_EI];
                *reinterpret_cast<bw_v4*>(el + 4 * t) = v;
            }
#if SCAN_LEAN
            (void)ex[0];  // bare options use neither the softplus nor the gate locals
            (void)ez[0];
            (void)esz[0];
#endif
#undef SCAN_EI
        }
#if !SCAN_B_CONST
        bw_put_rows<SCAN_ROW_ITERS, SCAN_NP, SCAN_THREADS>(s_bc + buf * SCAN_SM_BC, SCAN_BCW,
                                                          SCAN_BCK, qB);
#endif
#if !SCAN_C_CONST
        bw_put_rows<SCAN_ROW_ITERS, SCAN_NP, SCAN_THREADS>(s_bc + buf * SCAN_SM_BC + OFF_C,
                                                          SCAN_BCW, SCAN_BCK, qC);
#endif
#pragma unroll
        for (int i = 0; i < SCAN_NPT; ++i) h[i] = qh[i];
    };

    if (tiles > 0) {
        fetch(blk.lo + (tiles - 1) * SCAN_BT, tiles - 1);
        stage((int)((tiles - 1) & 1));
    }
    for (long long k = tiles - 1; k >= 0; --k) {
        const int buf = (int)(k & 1);
        const long long start = blk.lo + k * SCAN_BT;
        __syncthreads();  // A
        if (k > 0) fetch(start - SCAN_BT, k - 1);  // in flight during this tile

        const float* el = s_el + buf * SCAN_SM_EL + ch * SCAN_ELS;
#if SCAN_BC_GROUPED > 0
        const float* bc = s_bc + buf * SCAN_SM_BC + slice * K;
#endif
        float* prow = s_part + ch * SCAN_PCH;  // this channel's rows of y, S1, S2
        // ---- recompute the tile: h_{t-1} and the decay a_t of every step.
#if SCAN_LEAN
        // Lean: the decays are not kept (16 registers at N = 16, tile 8) but
        // recomputed in the sweep, bit for bit (the same exp2 of the same dt).
        float hp[SCAN_BT][SCAN_NPT], av[1][SCAN_NPT];
#define SCAN_AV(t) 0
#else
        float hp[SCAN_BT][SCAN_NPT], av[SCAN_BT][SCAN_NPT];
#define SCAN_AV(t) (t)
#endif
#pragma unroll
        for (int t = 0; t < SCAN_BT; ++t) {
            const bw_v2 d = *reinterpret_cast<const bw_v2*>(el + 4 * t);  // dt, dt*u
#if SCAN_BC_GROUPED > 0
            // BCW and the lane's offset slice*K are multiples of K's vector width.
            float r[K];
            bw_get<K>(r, bc + t * SCAN_BCW);
#endif
#if SCAN_HAS_Z
            float y = 0.0f;  // needed for dz only
#endif
#pragma unroll
            for (int i = 0; i < SCAN_NPT; ++i) {
#if SCAN_B_CONST
                const float b = Breg[i];
#else
                const float b = r[i * SCAN_BCK];
#endif
#if SCAN_C_CONST
                const float c = Creg[i];
#else
                const float c = r[i * SCAN_BCK + OFF_C];
#endif
                hp[t][i] = h[i];
                av[SCAN_AV(t)][i] = ssm_exp2_ftz(d.x * A2[i]);
                h[i] = fmaf(av[SCAN_AV(t)][i], h[i], d.y * b);
#if SCAN_HAS_Z
                y = fmaf(c, h[i], y);
#endif
                (void)c;
            }
#if SCAN_HAS_Z
            prow[bw_pslot(t, slice)] = y;
#endif
        }

        // ---- reverse sweep over the tile; h holds h_t on entry to step t.
#pragma unroll
        for (int t = SCAN_BT - 1; t >= 0; --t) {
            const bw_v4 e = *reinterpret_cast<const bw_v4*>(el + 4 * t);  // dt, dt*u, gy, u
            const float dt = e.x, gy = e.z;
#if SCAN_BC_GROUPED > 0
            float r[K];
            bw_get<K>(r, bc + t * SCAN_BCW);
#endif
            float s1 = 0.0f, s2 = 0.0f;
#if !SCAN_B_CONST
            float vl[SCAN_NPT];  // lam_t, for grouped dB
#endif
#if !SCAN_C_CONST
            float vh[SCAN_NPT];  // h_t, for grouped dC
#endif
#pragma unroll
            for (int i = 0; i < SCAN_NPT; ++i) {
#if SCAN_B_CONST
                const float b = Breg[i];
#else
                const float b = r[i * SCAN_BCK];
#endif
#if SCAN_C_CONST
                const float c = Creg[i];
#else
                const float c = r[i * SCAN_BCK + OFF_C];
#endif
                const float ht = (t == SCAN_BT - 1) ? h[i] : hp[t + 1][i];
                lam[i] = fmaf(c, gy, lam[i]);  // now dL/dh_t
#if !SCAN_B_CONST
                vl[i] = lam[i];
#endif
#if !SCAN_C_CONST
                vh[i] = ht;
#endif
#if SCAN_C_CONST
                dCc[i] = fmaf(gy, ht, dCc[i]);
#endif
#if SCAN_B_CONST
                dBc[i] = fmaf(lam[i], e.y, dBc[i]);
#endif
                s1 = fmaf(lam[i], b, s1);
#if SCAN_LEAN
                lam[i] *= ssm_exp2_ftz(dt * A2[i]);  // dL/dh_{t-1} through h_t
#else
                lam[i] *= av[t][i];  // dL/dh_{t-1} through h_t
#endif
                const float w = lam[i] * hp[t][i];
                s2 = fmaf(Av[i], w, s2);
                dA[i] = fmaf(dt, w, dA[i]);
            }
            // [t][channel][state]: the lane's NPT states are contiguous and aligned
            // to NPT floats (DTS and NP are multiples of it).
#if SCAN_LEAN
#define SCAN_DBC_COL ((ch * SCAN_NP + slice * SCAN_NPT) ^ SCAN_DBC_SWZ(t))
#else
#define SCAN_DBC_COL (ch * SCAN_NP + slice * SCAN_NPT)
#endif
#if !SCAN_B_CONST
            bw_put<SCAN_NPT>(s_dbc + t * SCAN_DTS + SCAN_DBC_COL, vl);
#endif
#if !SCAN_C_CONST
            bw_put<SCAN_NPT>(s_dbc + ((SCAN_BC_GROUPED - 1) * SCAN_BT + t) * SCAN_DTS + SCAN_DBC_COL,
                             vh);
#endif
#undef SCAN_DBC_COL
            prow[SCAN_CPB * SCAN_PCH + bw_pslot(t, slice)] = s1;
            prow[2 * SCAN_CPB * SCAN_PCH + bw_pslot(t, slice)] = s2;
        }
#undef SCAN_AV
        __syncthreads();  // B

        // ---- epilogue per item: the lanes' partial sums over the states, added
        // in lane order.
#pragma unroll
        for (int it = 0; it < SCAN_IPT; ++it) {
            const int t = slice + SCAN_TPC * it;
            const long long pos = start + t;
            if (eok[it]) {
                float sum[3];
                sum[0] = 0.0f;
#pragma unroll
                for (int qn = SCAN_HAS_Z ? 0 : 1; qn < 3; ++qn) {
                    const float* row = prow + qn * SCAN_CPB * SCAN_PCH;
                    float s = 0.0f;
#if SCAN_TPC >= 4
#pragma unroll
                    for (int c = 0; c < SCAN_TPC / 4; ++c) {
                        float v[4];
                        bw_get<4>(v, row + bw_pslot(t, 4 * c));  // lanes 4c .. 4c+3
                        s += v[0];
                        s += v[1];
                        s += v[2];
                        s += v[3];
                    }
#else
#pragma unroll
                    for (int sl = 0; sl < SCAN_TPC; ++sl) s += row[bw_pslot(t, sl)];
#endif
                    sum[qn] = s;
                }
                const float S1 = sum[1], S2 = sum[2];
#if SCAN_LEAN
                const bw_v4 e = *reinterpret_cast<const bw_v4*>(el + 4 * t);  // dt, dt*u, gy, u
                const float gy = e.z, u = e.w, dt = e.x;
#else
                const float gy = egy[it], u = eu[it], dt = edt[it];
#endif
                (void)gy;
#if SCAN_HAS_Z && SCAN_HAS_D
                const float y = fmaf(eD, u, sum[0]);
#elif SCAN_HAS_Z
                const float y = sum[0];
#endif
#if SCAN_HAS_D
                const float du = fmaf(gy, eD, dt * S1);
                sumD[it] = fmaf(gy, u, sumD[it]);
#else
                const float du = dt * S1;
#endif
                const float ddt = fmaf(S1, u, S2);
#if SCAN_SOFTPLUS && SCAN_LEAN
                const float ddelta = ddt * esp[it];
#elif SCAN_SOFTPLUS
                const float ddelta = ex[it] > 20.0f ? ddt : ddt * bw_sigmoid(ex[it]);
#else
                const float ddelta = ddt;
#endif
#if SCAN_HAS_BIAS
                sumBias[it] += ddelta;
#endif
                const long long at = (blk.row * Din + chan) * L + pos;
                bw_store(args.du, at, du);
                bw_store(args.ddelta, at, ddelta);
#if SCAN_HAS_Z && SCAN_LEAN
                bw_store(args.dz, at, eg[it] * y * ef[it]);
#elif SCAN_HAS_Z
                const float s = esz[it];
                bw_store(args.dz, at, eg[it] * y * (s * (1.0f + ez[it] * (1.0f - s))));
#endif
            }
#if SCAN_LEAN
            (void)esp[it];
            (void)ef[it];
#else
            (void)ex[it];
            (void)ez[it];
#endif
            (void)eg[it];
        }
        // ---- grouped dB/dC: this block's channels added in channel order,
        // dB from lam * dt*u, dC from h * gy; V states per unit of work.
#if SCAN_BC_GROUPED > 0
        {
            constexpr int V = SCAN_NP % 4 == 0 ? 4 : (SCAN_NP % 2 == 0 ? 2 : 1);
            constexpr int NG = SCAN_NP / V;
            const float* elb = s_el + buf * SCAN_SM_EL;
#pragma unroll
            for (int w = tid; w < SCAN_BC_GROUPED * SCAN_BT * NG; w += SCAN_THREADS) {
                const int ng = w % NG;
                const int t = (w / NG) % SCAN_BT;
                const int tensor = w / (NG * SCAN_BT);  // index into dbc
                const long long pos = start + t;
                if (pos >= blk.hi) continue;
                // Which gradient: the first grouped tensor is B unless B is constant.
                const bool is_b = !SCAN_B_CONST && tensor == 0;
                const int scale = is_b ? 1 : 2;  // dt*u or gy in el's float4
#if SCAN_LEAN
                const float* src = s_dbc + (tensor * SCAN_BT + t) * SCAN_DTS;
                const int swz = SCAN_DBC_SWZ(t);
#define SCAN_DBC_READ(c) (src + ((ng * V + (c) * SCAN_NP) ^ swz))
#else
                const float* src = s_dbc + (tensor * SCAN_BT + t) * SCAN_DTS + ng * V;
#define SCAN_DBC_READ(c) (src + (c) * SCAN_NP)
#endif
                float s[V];
#pragma unroll
                for (int j = 0; j < V; ++j) s[j] = 0.0f;
                const float* fs = elb + 4 * t + scale;
                if (blk.nch == SCAN_CPB) {  // every block but a segment's last: unrolled
#pragma unroll
                    for (int c = 0; c < SCAN_CPB; ++c) {
                        float v[V];
                        bw_get<V>(v, SCAN_DBC_READ(c));
                        const float f = fs[c * SCAN_ELS];
#pragma unroll
                        for (int j = 0; j < V; ++j) s[j] = fmaf(v[j], f, s[j]);
                    }
                } else {  // the same sums in the same order, over fewer channels
                    for (int c = 0; c < blk.nch; ++c) {
                        float v[V];
                        bw_get<V>(v, SCAN_DBC_READ(c));
                        const float f = fs[c * SCAN_ELS];
#pragma unroll
                        for (int j = 0; j < V; ++j) s[j] = fmaf(v[j], f, s[j]);
                    }
                }
#undef SCAN_DBC_READ
                float* part = is_b ? args.part_b : args.part_c;
                const long long base = (blk.row * args.blocks_per_seq + blk.cb) * SCAN_N;
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    const int n = ng * V + j;
                    if (n < SCAN_N) part[(base + n) * L + pos] = s[j];
                }
            }
        }
#endif
        if (k > 0) stage(buf ^ 1);
    }

    // ---- per-(sequence, channel) results.
    float* pp = args.part_params + (blk.seq * Din + chan) * SCAN_PARAMS;
#pragma unroll
    for (int i = 0; i < SCAN_NPT; ++i) {
        const int n = slice * SCAN_NPT + i;
        if (live && n < SCAN_N) {
            if (args.dinitial_states != nullptr)
                args.dinitial_states[(blk.seq * Din + chan) * SCAN_N + n] = lam[i];
            pp[n] = dA[i];
#if SCAN_B_CONST
            pp[SCAN_N + n] = dBc[i];
#endif
#if SCAN_C_CONST
            pp[2 * SCAN_N + n] = dCc[i];
#endif
        }
    }
    // dD and ddelta_bias: the items' sums over time, added over a channel's steps
    // in step order (in the part region, free after the last tile).
#if SCAN_HAS_D || SCAN_HAS_BIAS
    float* s_sum = s_part;  // [CPB][BT]
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
        __syncthreads();
#pragma unroll
        for (int it = 0; it < SCAN_IPT; ++it) {
            const int t = slice + SCAN_TPC * it;
            float v = 0.0f;
#if SCAN_HAS_D
            if (pass == 0) v = sumD[it];
#endif
#if SCAN_HAS_BIAS
            if (pass == 1) v = sumBias[it];
#endif
            if (t < SCAN_BT) s_sum[ch * SCAN_BT + t] = v;
        }
        __syncthreads();
        if (tid < blk.nch) {
            float s = 0.0f;
            for (int t = 0; t < SCAN_BT; ++t) s += s_sum[tid * SCAN_BT + t];
            args.part_params[(blk.seq * Din + blk.c0 + tid) * SCAN_PARAMS + 3 * SCAN_N + pass] = s;
        }
    }
#endif
}

// ---- 2b. the slice-major sweep (v5), in place of 2. when the host selects it.
#include "scan_bwd_slices.cuh"

// ---- 0. varlen only: the device-resident offsets, checked as the forward
// checks them (0 = cu[0] <= cu[1] <= ... <= cu[seqs] = L) and copied to `safe`,
// which the other kernels read instead (ScanBwdArgs::cu_seqlens points there).
// Offsets that are not a partition raise the status word the host reads after
// the launch (ScanBwdPlan::take_device_error) and are replaced by the in-bounds
// partition [0, 0, ..., 0, L], so nothing is read or written out of bounds.
// Checking here rather than in the sweep keeps the hot kernels as they were: a
// check folded into them cost the 5-blocks-per-SM sweep up to 32 bytes of spills.
// (Not emulated: it has no arithmetic to check, and the emulation has no atomics.)
#ifndef SSM_EMULATE
extern "C" __global__ void __launch_bounds__(256)
    mamba1_scan_bwd_check_offsets(const long long* cu, long long num_seqs, long long seqlen,
                                  long long* safe, unsigned int* status) {
    __shared__ int bad;
    if (threadIdx.x == 0) bad = 0;
    __syncthreads();
    for (long long i = threadIdx.x; i <= num_seqs; i += 256) {
        const long long v = cu[i];
        const bool ok = 0 <= v && v <= seqlen && (i != 0 || v == 0) && (i != num_seqs || v == seqlen) &&
                        (i == num_seqs || v <= cu[i + 1]);
        if (!ok) bad = 1;
    }
    __syncthreads();
    if (bad && threadIdx.x == 0) atomicOr(status, SCAN_STATUS_BAD_CU_SEQLENS);
    for (long long i = threadIdx.x; i <= num_seqs; i += 256)
        safe[i] = bad ? (i == num_seqs ? seqlen : 0) : cu[i];
}
#endif

// ---- 3. grouped dB/dC: per (row, group, n, position), the partials of the
// group's channel blocks in block order. One thread per output element.
extern "C" __global__ void __launch_bounds__(256)
    mamba1_scan_bwd_reduce_bc(const ScanBwdArgs args, long long which) {
    const bool is_b = which == 0;
    const long long groups = is_b ? args.groups_b : args.groups_c;
    const float* part = is_b ? args.part_b : args.part_c;
    scan_elem_t* out = is_b ? args.dB : args.dC;
    const long long L = args.seqlen;
    const long long rows = args.cu_seqlens != nullptr ? 1 : args.num_seqs;
    const long long total = rows * groups * SCAN_N * L;
    // Channel blocks of one group: its segments times blocks per segment.
    const long long per_group = (args.d_inner / groups / args.seg_channels) * args.blocks_per_seg;
    for (long long e = (long long)blockIdx.x * 256 + threadIdx.x; e < total;
         e += (long long)gridDim.x * 256) {
        const long long pos = e % L;
        const long long rgn = e / L;  // (row, g, n)
        const long long n = rgn % SCAN_N;
        const long long rg = rgn / SCAN_N;
        const long long g = rg % groups;
        const long long row = rg / groups;
        float s = 0.0f;
        for (long long k = 0; k < per_group; ++k) {
            const long long cb = g * per_group + k;
            s += part[((row * args.blocks_per_seq + cb) * SCAN_N + n) * L + pos];
        }
        bw_store(out, e, s);
    }
}

// ---- 4. dA, dD, ddelta_bias and constant dB/dC: per (channel, parameter), the
// sequences' partials in sequence order.
extern "C" __global__ void __launch_bounds__(256)
    mamba1_scan_bwd_reduce_params(const ScanBwdArgs args) {
    const long long total = args.d_inner * SCAN_PARAMS;
    for (long long e = (long long)blockIdx.x * 256 + threadIdx.x; e < total;
         e += (long long)gridDim.x * 256) {
        const long long chan = e / SCAN_PARAMS;
        const int p = (int)(e - chan * SCAN_PARAMS);
        float s = 0.0f;
        for (long long q = 0; q < args.num_seqs; ++q)
            s += args.part_params[(q * args.d_inner + chan) * SCAN_PARAMS + p];
        if (p < SCAN_N) {
            args.dA[chan * SCAN_N + p] = s;
        } else if (p < 2 * SCAN_N) {
#if SCAN_B_CONST
            bw_store(args.dB, chan * SCAN_N + (p - SCAN_N), s);
#endif
        } else if (p < 3 * SCAN_N) {
#if SCAN_C_CONST
            bw_store(args.dC, chan * SCAN_N + (p - 2 * SCAN_N), s);
#endif
        } else if (p == 3 * SCAN_N) {
            if (args.dD != nullptr) args.dD[chan] = s;
        } else {
            if (args.ddelta_bias != nullptr) args.ddelta_bias[chan] = s;
        }
    }
}
