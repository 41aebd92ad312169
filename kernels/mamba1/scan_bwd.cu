// Mamba-1 selective scan, backward (docs/BACKWARD-MAMBA1.md; layouts docs/DESIGN.md §2).
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
//   mamba1_scan_bwd_reduce_bc      grouped dB/dC: the blocks' partials of one
//                                  group added in channel-block order.
//   mamba1_scan_bwd_reduce_params  dA, dD, ddelta_bias, constant dB/dC: the
//                                  sequences' partials added in sequence order.
//
// No float atomics anywhere: every sum has an order fixed by the problem and
// the compile-time tiling, so reruns are bit-identical.
//
// Block geometry: as the forward (kernels/mamba1/scan_fwd.cu), a block owns
// SCAN_CPB = SCAN_THREADS / SCAN_TPC channels of one sequence inside one B group
// and one C group. Thread tid is lane `slice = tid % SCAN_TPC` of channel
// `tid / SCAN_TPC` and holds states slice*NPT .. +NPT of it. The lanes of a
// channel are adjacent, so a warp's reads of the B/C rows in shared memory are
// broadcasts across its channels. Elementwise work (staging the tile's inputs,
// the per-step epilogue) is cut into (channel, step) items j = tid + k*THREADS.
//
// Positions of a tile past the sequence get dt = u = gy = 0: the step is an exact
// identity for the state (2^0 = 1, h + 0) and for the adjoint (lam * 1 + C * 0),
// and adds 0 to every sum; nothing is written there (those positions belong to
// the next sequence).
//
// Compile-time configuration (-D): SCAN_DTYPE (0 f32, 1 f16, 2 bf16), SCAN_N,
// SCAN_TPC, SCAN_NPT, SCAN_THREADS, SCAN_BT, and the 0/1 flags SCAN_HAS_BIAS,
// SCAN_SOFTPLUS, SCAN_HAS_D, SCAN_HAS_Z, SCAN_B_CONST, SCAN_C_CONST. The host
// mirrors the shared-memory layout (SCAN_BWD_SMEM_BYTES is checked against it).
#include "scan_math.cuh"  // the forward's softplus and silu, so dt is recomputed bit for bit

#if !defined(SCAN_N) || !defined(SCAN_TPC) || !defined(SCAN_NPT) || !defined(SCAN_THREADS) || \
    !defined(SCAN_BT)
#error "SCAN_N, SCAN_TPC, SCAN_NPT, SCAN_THREADS and SCAN_BT must be defined"
#endif

#define SCAN_CPB (SCAN_THREADS / SCAN_TPC)  // channels per block
#define SCAN_NP (SCAN_TPC * SCAN_NPT)       // N padded to the lanes' slices
#define SCAN_ITEMS (SCAN_CPB * SCAN_BT)     // (channel, step) items of a tile
#define SCAN_ITEM_ITERS ((SCAN_ITEMS + SCAN_THREADS - 1) / SCAN_THREADS)
#define SCAN_ROW (SCAN_BT + 1)  // per-step rows padded by a word against bank conflicts
#define SCAN_BC_GROUPED ((SCAN_B_CONST ? 0 : 1) + (SCAN_C_CONST ? 0 : 1))
// Per-parameter partial sums of one (sequence, channel) in part_params.
#define SCAN_PARAMS (3 * SCAN_N + 2)

#if SCAN_THREADS % SCAN_TPC != 0 || 32 % SCAN_TPC != 0
#error "SCAN_TPC must be a power of two dividing 32 and SCAN_THREADS"
#endif
#if SCAN_NP < SCAN_N
#error "SCAN_TPC * SCAN_NPT must cover SCAN_N"
#endif

// Shared memory of mamba1_scan_bwd, in floats (the checkpoint kernel uses a prefix):
//   dt, u, gy           [CPB][ROW] each
//   B rows, C rows      [BT][NP] each, when grouped
//   y, S1, S2 partials  [CPB * TPC][ROW] each (one row per lane)
//   dB, dC partials     [BT][NP][DBC_NS] each (+1 word per step), when grouped
//   per-channel sums    [CPB][ROW] (dD, then ddelta_bias)
// The checkpoint kernel uses dt, dt*u and (grouped B) the B rows at the same
// offsets: SCAN_CKPT_FLOATS.
#define SCAN_SM_STEP (SCAN_CPB * SCAN_ROW)
#define SCAN_SM_ROWS (SCAN_BT * SCAN_NP)
#define SCAN_SM_LANE (SCAN_CPB * SCAN_TPC * SCAN_ROW)
// dB/dC partials: the channels of one (step, state) side by side, so that the
// reduction reads a warp's 32 (step, state) pairs from distinct banks; the
// stride CPB + 2 makes the scan's stores (4 channels x 8 slices of a warp at
// N = 16) distinct banks too.
#define SCAN_DBC_NS (SCAN_CPB + 2)
#define SCAN_DBC_TS (SCAN_NP * SCAN_DBC_NS + 1)
#define SCAN_DBC_AT(t, n, ch) ((t) * SCAN_DBC_TS + (n) * SCAN_DBC_NS + (ch))
#define SCAN_SM_DBC (SCAN_BT * SCAN_DBC_TS)
#define SCAN_SM_FLOATS                                                                 \
    (3 * SCAN_SM_STEP + SCAN_BC_GROUPED * SCAN_SM_ROWS + 3 * SCAN_SM_LANE +             \
     SCAN_BC_GROUPED * SCAN_SM_DBC + SCAN_SM_STEP)
#define SCAN_CKPT_FLOATS (3 * SCAN_SM_STEP + (SCAN_B_CONST ? 0 : SCAN_SM_ROWS))
#if defined(SCAN_BWD_SMEM_BYTES) && SCAN_BWD_SMEM_BYTES != SCAN_SM_FLOATS * 4
#error "the host's shared-memory size differs from the kernel's layout"
#endif
#if defined(SCAN_CKPT_SMEM_BYTES) && SCAN_CKPT_SMEM_BYTES != SCAN_CKPT_FLOATS * 4
#error "the host's checkpoint-kernel shared-memory size differs from the kernel's layout"
#endif
// (state, step) pairs of a tile's B or C rows per thread, when staging them.
#define SCAN_ROW_ITERS ((SCAN_N * SCAN_BT + SCAN_THREADS - 1) / SCAN_THREADS)
#ifndef SCAN_MIN_BLOCKS
#define SCAN_MIN_BLOCKS 1
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
#else
#define SCAN_DEV inline
#endif

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
    const long long* cu_seqlens;   // (seqs + 1) or null
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

// Which sequence, channels and positions a block owns.
struct BwBlock {
    long long seq, row, lo, hi, c0, cb, gb, gc, slot0;
    int nch;
};

SCAN_DEV BwBlock bw_block(const ScanBwdArgs& a, long long block) {
    BwBlock b;
    b.seq = block / a.blocks_per_seq;
    b.cb = block - b.seq * a.blocks_per_seq;
    const long long seg = b.cb / a.blocks_per_seg;
    const long long first_in_seg = (b.cb - seg * a.blocks_per_seg) * SCAN_CPB;
    b.c0 = seg * a.seg_channels + first_in_seg;
    const long long left = a.seg_channels - first_in_seg;
    b.nch = (int)(left < SCAN_CPB ? left : SCAN_CPB);
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

// dt of one input (bias, softplus), as the forward forms it.
SCAN_DEV float bw_dt(float x) {
#if SCAN_SOFTPLUS
    return scan_softplus(x);
#else
    return x;
#endif
}

SCAN_DEV void bw_zero(float* p, int n) {
    for (int j = threadIdx.x; j < n; j += SCAN_THREADS) p[j] = 0.0f;
}

// Fetch this thread's share of one tile's B (or C) rows into registers (the
// loads fly while the current tile computes), and put them into shared memory
// as [t][NP] f32 (padded states stay 0) once the tile is staged.
SCAN_DEV void bw_fetch_rows(float (&q)[SCAN_ROW_ITERS], const scan_elem_t* src, long long start,
                            long long hi, long long L) {
#pragma unroll
    for (int it = 0; it < SCAN_ROW_ITERS; ++it) {
        const int j = threadIdx.x + it * SCAN_THREADS;
        const int n = j / SCAN_BT;
        const long long pos = start + (j - n * SCAN_BT);
        q[it] = (j < SCAN_N * SCAN_BT && pos < hi) ? bw_load(src, (long long)n * L + pos) : 0.0f;
    }
}

SCAN_DEV void bw_put_rows(float* rows, const float (&q)[SCAN_ROW_ITERS]) {
#pragma unroll
    for (int it = 0; it < SCAN_ROW_ITERS; ++it) {
        const int j = threadIdx.x + it * SCAN_THREADS;
        const int n = j / SCAN_BT;
        if (j < SCAN_N * SCAN_BT) rows[(j - n * SCAN_BT) * SCAN_NP + n] = q[it];
    }
}

// One tile's raw elementwise inputs of this thread's items, fetched ahead.
struct BwItems {
    float x[SCAN_ITEM_ITERS];  // delta (+ bias in the consumer)
    float u[SCAN_ITEM_ITERS];
    float g[SCAN_ITEM_ITERS];  // d_out (sweep only)
    float z[SCAN_ITEM_ITERS];  // z (sweep with z only)
    bool ok[SCAN_ITEM_ITERS];  // inside the block's channels and the sequence
};

template <bool SWEEP>
SCAN_DEV void bw_fetch_items(BwItems& q, const ScanBwdArgs& a, const BwBlock& blk,
                             long long start) {
#pragma unroll
    for (int it = 0; it < SCAN_ITEM_ITERS; ++it) {
        const int j = threadIdx.x + it * SCAN_THREADS;
        const int ech = j / SCAN_BT;
        const long long pos = start + (j - ech * SCAN_BT);
        q.ok[it] = j < SCAN_ITEMS && ech < blk.nch && pos < blk.hi;
        q.x[it] = q.u[it] = q.g[it] = q.z[it] = 0.0f;
        if (q.ok[it]) {
            const long long at = (blk.row * a.d_inner + blk.c0 + ech) * a.seqlen + pos;
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

// ---- 1. checkpoints: the state entering each tile of each (sequence, channel).
extern "C" __global__ void __launch_bounds__(SCAN_THREADS)
    mamba1_scan_bwd_ckpt(const ScanBwdArgs args) {
#ifndef SSM_EMULATE
    extern __shared__ __align__(16) unsigned char scan_smem[];
#else
    unsigned char* scan_smem = emu::shared_memory();
#endif
    float* s_dt = reinterpret_cast<float*>(scan_smem);
    float* s_dtu = s_dt + SCAN_SM_STEP;
#if !SCAN_B_CONST
    float* s_B = s_dt + 3 * SCAN_SM_STEP;  // where mamba1_scan_bwd keeps it
    bw_zero(s_B, SCAN_SM_ROWS);
#endif
    const long long L = args.seqlen, Din = args.d_inner;
    (void)L;
    const BwBlock blk = bw_block(args, blockIdx.x);
    const int tid = threadIdx.x;
    const int ch = tid / SCAN_TPC, slice = tid % SCAN_TPC;
    const long long chan = blk.c0 + ch;

    float A2[SCAN_NPT], h[SCAN_NPT];
#if SCAN_B_CONST
    float Breg[SCAN_NPT];
#endif
#pragma unroll
    for (int i = 0; i < SCAN_NPT; ++i) {
        const int n = slice * SCAN_NPT + i;
        const bool real = ch < blk.nch && n < SCAN_N;
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
#endif
    // Software pipeline: tile k+1's loads are in flight while tile k scans.
    BwItems q;
    bw_fetch_items<false>(q, args, blk, blk.lo);
#if !SCAN_B_CONST
    float qB[SCAN_ROW_ITERS];
    bw_fetch_rows(qB, Bsrc, blk.lo, blk.hi, L);
#endif
    for (long long k = 0; k < tiles; ++k) {
        const long long start = blk.lo + k * SCAN_BT;
        __syncthreads();  // the previous tile's reads of shared memory are done
#pragma unroll
        for (int it = 0; it < SCAN_ITEM_ITERS; ++it) {
            const int j = tid + it * SCAN_THREADS;
            const int ech = j / SCAN_BT, t = j - ech * SCAN_BT;
            float dt = 0.0f, dtu = 0.0f;
            if (q.ok[it]) {
                float x = q.x[it];
#if SCAN_HAS_BIAS
                x += args.delta_bias[blk.c0 + ech];
#endif
                dt = bw_dt(x);
                dtu = dt * q.u[it];
            }
            if (j < SCAN_ITEMS) {
                s_dt[ech * SCAN_ROW + t] = dt;
                s_dtu[ech * SCAN_ROW + t] = dtu;
            }
        }
#if !SCAN_B_CONST
        bw_put_rows(s_B, qB);
#endif
        if (k + 1 < tiles) {
            bw_fetch_items<false>(q, args, blk, start + SCAN_BT);
#if !SCAN_B_CONST
            bw_fetch_rows(qB, Bsrc, start + SCAN_BT, blk.hi, L);
#endif
        }
        __syncthreads();
        if (ch < blk.nch) {
#pragma unroll
            for (int i = 0; i < SCAN_NPT; ++i) {
                const int n = slice * SCAN_NPT + i;
                if (n < SCAN_N) ck[k * SCAN_N + n] = h[i];
            }
        }
#pragma unroll
        for (int t = 0; t < SCAN_BT; ++t) {
            const float dt = s_dt[ch * SCAN_ROW + t], dtu = s_dtu[ch * SCAN_ROW + t];
#pragma unroll
            for (int i = 0; i < SCAN_NPT; ++i) {
#if SCAN_B_CONST
                const float b = Breg[i];
#else
                const float b = s_B[t * SCAN_NP + slice * SCAN_NPT + i];
#endif
                h[i] = fmaf(ssm_exp2_ftz(dt * A2[i]), h[i], dtu * b);
            }
        }
    }
}

// ---- 2. the reverse sweep.
extern "C" __global__ void __launch_bounds__(SCAN_THREADS, SCAN_MIN_BLOCKS)
    mamba1_scan_bwd(const ScanBwdArgs args) {
#ifndef SSM_EMULATE
    extern __shared__ __align__(16) unsigned char scan_smem[];
#else
    unsigned char* scan_smem = emu::shared_memory();
#endif
    float* s_dt = reinterpret_cast<float*>(scan_smem);
    float* s_u = s_dt + SCAN_SM_STEP;
    float* s_gy = s_u + SCAN_SM_STEP;
    float* next = s_gy + SCAN_SM_STEP;
#if !SCAN_B_CONST
    float* s_B = next;
    next += SCAN_SM_ROWS;
    bw_zero(s_B, SCAN_SM_ROWS);
#endif
#if !SCAN_C_CONST
    float* s_C = next;
    next += SCAN_SM_ROWS;
    bw_zero(s_C, SCAN_SM_ROWS);
#endif
    float* s_py = next;
    float* s_p1 = s_py + SCAN_SM_LANE;
    float* s_p2 = s_p1 + SCAN_SM_LANE;
    next = s_p2 + SCAN_SM_LANE;
#if !SCAN_B_CONST
    float* s_dB = next;
    next += SCAN_SM_DBC;
#endif
#if !SCAN_C_CONST
    float* s_dC = next;
    next += SCAN_SM_DBC;
#endif
#if SCAN_HAS_D || SCAN_HAS_BIAS
    float* s_sum = next;  // per-channel sums [CPB][ROW]
#endif

    const long long L = args.seqlen, Din = args.d_inner;
    const BwBlock blk = bw_block(args, blockIdx.x);
    const int tid = threadIdx.x;
    const int ch = tid / SCAN_TPC, slice = tid % SCAN_TPC;
    const long long chan = blk.c0 + ch;
    const int lane_row = tid * SCAN_ROW;  // this lane's row of s_py, s_p1, s_p2

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
        const bool real = ch < blk.nch && n < SCAN_N;
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
    // Per-item parameters and running sums over time (items keep their channel
    // across tiles: j / BT does not depend on the tile).
#if SCAN_HAS_D
    float eD[SCAN_ITEM_ITERS], sumD[SCAN_ITEM_ITERS];
#endif
#if SCAN_HAS_BIAS
    float ebias[SCAN_ITEM_ITERS], sumBias[SCAN_ITEM_ITERS];
#endif
#pragma unroll
    for (int k = 0; k < SCAN_ITEM_ITERS; ++k) {
        const int j = tid + k * SCAN_THREADS;
        const int ech = j / SCAN_BT;
        const bool ok = j < SCAN_ITEMS && ech < blk.nch;
        (void)ok;
#if SCAN_HAS_D
        eD[k] = ok ? args.D[blk.c0 + ech] : 0.0f;
        sumD[k] = 0.0f;
#endif
#if SCAN_HAS_BIAS
        ebias[k] = ok ? args.delta_bias[blk.c0 + ech] : 0.0f;
        sumBias[k] = 0.0f;
#endif
    }

    const long long len = blk.hi - blk.lo;
    const long long tiles = (len + SCAN_BT - 1) / SCAN_BT;
    const float* ck = args.ckpt + ((blk.row * Din + chan) * args.ckpt_slots + blk.slot0) * SCAN_N;
#if !SCAN_B_CONST
    const scan_elem_t* Bsrc = args.B + ((blk.row * args.groups_b + blk.gb) * SCAN_N) * L;
#endif
#if !SCAN_C_CONST
    const scan_elem_t* Csrc = args.C + ((blk.row * args.groups_c + blk.gc) * SCAN_N) * L;
#endif
    // Software pipeline: the last tile's inputs and checkpoint now, then each
    // tile fetches the one before it while it computes.
    BwItems q;
    float qh[SCAN_NPT];
#if !SCAN_B_CONST
    float qB[SCAN_ROW_ITERS];
#endif
#if !SCAN_C_CONST
    float qC[SCAN_ROW_ITERS];
#endif
    if (tiles > 0) {
        const long long last = blk.lo + (tiles - 1) * SCAN_BT;
        bw_fetch_items<true>(q, args, blk, last);
#if !SCAN_B_CONST
        bw_fetch_rows(qB, Bsrc, last, blk.hi, L);
#endif
#if !SCAN_C_CONST
        bw_fetch_rows(qC, Csrc, last, blk.hi, L);
#endif
#pragma unroll
        for (int i = 0; i < SCAN_NPT; ++i) {
            const int n = slice * SCAN_NPT + i;
            qh[i] = (ch < blk.nch && n < SCAN_N) ? ck[(tiles - 1) * SCAN_N + n] : 0.0f;
        }
    }
    for (long long k = tiles - 1; k >= 0; --k) {
        const long long start = blk.lo + k * SCAN_BT;
        __syncthreads();  // the previous tile's reads of shared memory are done

        // ---- stage the tile's inputs (fetched during the previous tile); keep
        // each item's values for the epilogue.
        float ex[SCAN_ITEM_ITERS], eu[SCAN_ITEM_ITERS], eg[SCAN_ITEM_ITERS],
            ez[SCAN_ITEM_ITERS], edt[SCAN_ITEM_ITERS], egy[SCAN_ITEM_ITERS];
#pragma unroll
        for (int it = 0; it < SCAN_ITEM_ITERS; ++it) {
            const int j = tid + it * SCAN_THREADS;
            const int ech = j / SCAN_BT, t = j - ech * SCAN_BT;
            ex[it] = eu[it] = eg[it] = ez[it] = edt[it] = egy[it] = 0.0f;
            if (q.ok[it]) {
                float x = q.x[it];
#if SCAN_HAS_BIAS
                x += ebias[it];
#endif
                ex[it] = x;
                edt[it] = bw_dt(x);
                eu[it] = q.u[it];
                eg[it] = q.g[it];
#if SCAN_HAS_Z
                ez[it] = q.z[it];
                egy[it] = eg[it] * scan_silu(ez[it]);
#else
                egy[it] = eg[it];
#endif
            }
            if (j < SCAN_ITEMS) {
                s_dt[ech * SCAN_ROW + t] = edt[it];
                s_u[ech * SCAN_ROW + t] = eu[it];
                s_gy[ech * SCAN_ROW + t] = egy[it];
            }
        }
#if !SCAN_B_CONST
        bw_put_rows(s_B, qB);
#endif
#if !SCAN_C_CONST
        bw_put_rows(s_C, qC);
#endif
        float h[SCAN_NPT];
#pragma unroll
        for (int i = 0; i < SCAN_NPT; ++i) h[i] = qh[i];
        // Tile k-1's loads fly while this tile computes.
        if (k > 0) {
            const long long prev = start - SCAN_BT;
            bw_fetch_items<true>(q, args, blk, prev);
#if !SCAN_B_CONST
            bw_fetch_rows(qB, Bsrc, prev, blk.hi, L);
#endif
#if !SCAN_C_CONST
            bw_fetch_rows(qC, Csrc, prev, blk.hi, L);
#endif
#pragma unroll
            for (int i = 0; i < SCAN_NPT; ++i) {
                const int n = slice * SCAN_NPT + i;
                qh[i] = (ch < blk.nch && n < SCAN_N) ? ck[(k - 1) * SCAN_N + n] : 0.0f;
            }
        }
        __syncthreads();

        // ---- recompute the tile: h_{t-1} and the decay a_t of every step.
        float hp[SCAN_BT][SCAN_NPT], av[SCAN_BT][SCAN_NPT];
#pragma unroll
        for (int t = 0; t < SCAN_BT; ++t) {
            const float dt = s_dt[ch * SCAN_ROW + t];
            const float dtu = dt * s_u[ch * SCAN_ROW + t];
            float y = 0.0f;
#pragma unroll
            for (int i = 0; i < SCAN_NPT; ++i) {
#if SCAN_B_CONST
                const float b = Breg[i];
#else
                const float b = s_B[t * SCAN_NP + slice * SCAN_NPT + i];
#endif
#if SCAN_C_CONST
                const float c = Creg[i];
#else
                const float c = s_C[t * SCAN_NP + slice * SCAN_NPT + i];
#endif
                hp[t][i] = h[i];
                av[t][i] = ssm_exp2_ftz(dt * A2[i]);
                h[i] = fmaf(av[t][i], h[i], dtu * b);
                y = fmaf(c, h[i], y);
            }
            s_py[lane_row + t] = y;
        }

        // ---- reverse sweep over the tile; h holds h_t on entry to step t.
#pragma unroll
        for (int t = SCAN_BT - 1; t >= 0; --t) {
            const float dt = s_dt[ch * SCAN_ROW + t];
            const float u = s_u[ch * SCAN_ROW + t];
            const float gy = s_gy[ch * SCAN_ROW + t];
            const float dtu = dt * u;
            float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
            for (int i = 0; i < SCAN_NPT; ++i) {
                const int n = slice * SCAN_NPT + i;
                (void)n;
#if SCAN_B_CONST
                const float b = Breg[i];
#else
                const float b = s_B[t * SCAN_NP + n];
#endif
#if SCAN_C_CONST
                const float c = Creg[i];
#else
                const float c = s_C[t * SCAN_NP + n];
#endif
                const float ht = (t == SCAN_BT - 1) ? h[i] : hp[t + 1][i];
                lam[i] = fmaf(c, gy, lam[i]);  // now dL/dh_t
#if SCAN_C_CONST
                dCc[i] = fmaf(gy, ht, dCc[i]);
#else
                s_dC[SCAN_DBC_AT(t, n, ch)] = gy * ht;
#endif
#if SCAN_B_CONST
                dBc[i] = fmaf(lam[i], dtu, dBc[i]);
#else
                s_dB[SCAN_DBC_AT(t, n, ch)] = lam[i] * dtu;
#endif
                s1 = fmaf(lam[i], b, s1);
                const float w = lam[i] * av[t][i] * hp[t][i];
                s2 = fmaf(Av[i], w, s2);
                dA[i] = fmaf(dt, w, dA[i]);
                lam[i] *= av[t][i];  // dL/dh_{t-1} through h_t
            }
            s_p1[lane_row + t] = s1;
            s_p2[lane_row + t] = s2;
        }
        __syncthreads();

        // ---- epilogue per item: the lanes' partial sums over the states.
#pragma unroll
        for (int it = 0; it < SCAN_ITEM_ITERS; ++it) {
            const int j = tid + it * SCAN_THREADS;
            const int ech = j / SCAN_BT, t = j - ech * SCAN_BT;
            const long long pos = start + t;
            if (j < SCAN_ITEMS && ech < blk.nch && pos < blk.hi) {
                float y = 0.0f, S1 = 0.0f, S2 = 0.0f;
                for (int sl = 0; sl < SCAN_TPC; ++sl) {
                    const int r = (ech * SCAN_TPC + sl) * SCAN_ROW + t;
                    y += s_py[r];
                    S1 += s_p1[r];
                    S2 += s_p2[r];
                }
                const float gy = egy[it], u = eu[it], dt = edt[it];
                (void)gy;
#if SCAN_HAS_D
                y = fmaf(eD[it], u, y);
                const float du = fmaf(gy, eD[it], dt * S1);
                sumD[it] = fmaf(gy, u, sumD[it]);
#else
                const float du = dt * S1;
#endif
                const float ddt = fmaf(S1, u, S2);
#if SCAN_SOFTPLUS
                const float ddelta = ex[it] > 20.0f ? ddt : ddt * bw_sigmoid(ex[it]);
#else
                const float ddelta = ddt;
#endif
#if SCAN_HAS_BIAS
                sumBias[it] += ddelta;
#endif
                const long long at = (blk.row * Din + blk.c0 + ech) * L + pos;
                bw_store(args.du, at, du);
                bw_store(args.ddelta, at, ddelta);
#if SCAN_HAS_Z
                const float s = bw_sigmoid(ez[it]);
                bw_store(args.dz, at, eg[it] * y * (s * (1.0f + ez[it] * (1.0f - s))));
#endif
            }
            (void)ex[it];
            (void)ez[it];
            (void)eg[it];
        }
        // ---- grouped dB/dC: this block's channels added in channel order.
#if SCAN_BC_GROUPED > 0
        for (int j = tid; j < SCAN_N * SCAN_BT; j += SCAN_THREADS) {
            const int n = j / SCAN_BT, t = j - n * SCAN_BT;
            const long long pos = start + t;
            if (pos >= blk.hi) continue;
            const long long at = ((blk.row * args.blocks_per_seq + blk.cb) * SCAN_N + n) * L + pos;
#if !SCAN_B_CONST
            float sb = 0.0f;
            for (int c = 0; c < blk.nch; ++c) sb += s_dB[SCAN_DBC_AT(t, n, c)];
            args.part_b[at] = sb;
#endif
#if !SCAN_C_CONST
            float sc = 0.0f;
            for (int c = 0; c < blk.nch; ++c) sc += s_dC[SCAN_DBC_AT(t, n, c)];
            args.part_c[at] = sc;
#endif
        }
#endif
    }

    // ---- per-(sequence, channel) results.
    float* pp = args.part_params + (blk.seq * Din + chan) * SCAN_PARAMS;
#pragma unroll
    for (int i = 0; i < SCAN_NPT; ++i) {
        const int n = slice * SCAN_NPT + i;
        if (ch < blk.nch && n < SCAN_N) {
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
    // in step order.
#if SCAN_HAS_D || SCAN_HAS_BIAS
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
        __syncthreads();
#pragma unroll
        for (int it = 0; it < SCAN_ITEM_ITERS; ++it) {
            const int j = tid + it * SCAN_THREADS;
            const int ech = j / SCAN_BT, t = j - ech * SCAN_BT;
            float v = 0.0f;
#if SCAN_HAS_D
            if (pass == 0) v = sumD[it];
#endif
#if SCAN_HAS_BIAS
            if (pass == 1) v = sumBias[it];
#endif
            if (j < SCAN_ITEMS) s_sum[ech * SCAN_ROW + t] = v;
        }
        __syncthreads();
        if (tid < blk.nch) {
            float s = 0.0f;
            for (int t = 0; t < SCAN_BT; ++t) s += s_sum[tid * SCAN_ROW + t];
            args.part_params[(blk.seq * Din + blk.c0 + tid) * SCAN_PARAMS + 3 * SCAN_N + pass] = s;
        }
    }
#endif
}

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
