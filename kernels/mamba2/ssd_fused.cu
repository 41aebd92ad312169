// Mamba-2 SSD chunked forward, fused into one kernel on tensor cores
// (docs/DESIGN.md §1.2; notes and measurements in docs/kernels/mamba2-ssd.md).
//
// One block per (work item, head, tile of PT head-dim columns). A work item is a
// sequence, or a segment of one (see ssd_common.cuh); the block walks its chunks
// of Q tokens in order and keeps the PT x N f32 state S in registers, as mma.sync
// accumulator fragments, for the whole walk. Per chunk:
//   1. warp 0 computes dt', the cumulative log2-decay s and the state weights
//      w_j = exp2(s_last - s_j) dt'_j a chunk ahead, into a double-buffered
//      shared array;
//   2. Y = exp2(s_i) C S_prev^T (inter-chunk)  +  (C B^T o decay o mask o dt') x
//      (intra-chunk), computed 16 rows at a time: the C B^T tile of 16 x 16 is
//      formed in registers, masked and scaled, and fed back as the A operand of
//      the next mma (its accumulator layout is the A-fragment layout);
//   3. out = (Y + D x) * silu(z) is written from the fragments;
//   4. S = exp2(s_last) S + (w o x)^T B on tensor cores, accumulating into S.
//      With final states, (w o x) is split into hi + lo halves of the input type so
//      that the state keeps ~16 mantissa bits (they meet the f32 budget);
//   5. S is written to shared memory in the input type for the next chunk's step 2.
// x, B, C of a chunk arrive by cp.async (SSD_STAGES = 2: the next chunk's copy is
// in flight while this one computes). dt is prefetched a chunk ahead in registers.
//
// SSD_CB_GLOBAL = 1: the C B^T tiles of step 2 come precomputed, once per group,
// from ssd_chunk_cb.cu (through the same cp.async stage) instead of being formed
// here: the mma work of step 2 drops by about 40% and so do its shared-memory reads.
//
// SSD_STATE_ONLY = 1 builds the prepass of a split sequence: steps 1 and 4 only,
// from a zero state, writing the segment's state and total log2-decay to a
// workspace; the main pass then starts segment k from
//   S_k = sum_m (prod_{m < m' < k} exp2(dec_m')) R_m  (+ decayed initial state).
//
// Compile-time defines (chosen by crates/mamba2-ssd/src/cuda/config.rs):
//   SSD_DTYPE 1|2, SSD_Q (64, 128, 256), SSD_N (16..256, % 16), SSD_P, SSD_PT (32|64,
//   divides P), SSD_NWARPS, SSD_YC (32|64, divides PT), SSD_STAGES (1|2),
//   SSD_MIN_BLOCKS (launch bound), SSD_CB_GLOBAL, SSD_DT_BIAS, SSD_DT_SOFTPLUS, SSD_D_MODE (0 none,
//   1 per head, 2 per head and p), SSD_HAS_Z, SSD_HAS_S0, SSD_FINAL, SSD_STATE_ONLY,
//   SSD_MAX_SMEM (the device's per-block shared memory).
#include "ssd_common.cuh"

#if SSD_DTYPE == 0
#error "ssd_fused.cu is the f16/bf16 tensor-core kernel; f32 uses ssd_simt.cu"
#endif

namespace ssd_fused {

constexpr int Q = SSD_Q;
constexpr int N = SSD_N;
constexpr int P = SSD_P;
constexpr int PT = SSD_PT;
constexpr int NW = SSD_NWARPS;
constexpr int NT = NW * 32;
constexpr int YC = SSD_YC;
constexpr int STAGES = SSD_STAGES;
#ifdef SSD_STATE_ONLY
constexpr bool STATE_ONLY = SSD_STATE_ONLY != 0;
#else
constexpr bool STATE_ONLY = false;
#endif
#ifdef SSD_CB_GLOBAL
constexpr bool CB_GLOBAL = SSD_CB_GLOBAL != 0 && !STATE_ONLY;
#else
constexpr bool CB_GLOBAL = false;
#endif
// The z gate's loads go out before the unit's mma work when C B^T comes from the
// workspace (registers to spare), unless SSD_Z_PREFETCH=0.
#ifndef SSD_Z_PREFETCH
#define SSD_Z_PREFETCH 1
#endif
constexpr bool Z_PREFETCH = SSD_Z_PREFETCH && CB_GLOBAL;
constexpr int RT = Q / 16;
constexpr int CB_TILES = RT * (RT + 1) / 2;

static_assert(Q % 64 == 0 && Q <= 256, "chunk must be 64, 128 or 256");

// Experiment switches (SSM_NVRTC_FLAGS="-DSSD_...=..." on the device, no rebuild;
// docs/kernels/mamba2-ssd.md records what each measured):
//   SSD_UNROLL_STATE  1: the state update's Q/16 k-steps fully unrolled
//   SSD_UNROLL_INTRA  1: the intra-chunk tile loop unrolled (guarded by the row tile)
//   SSD_EARLY_CB      1: (1 stage, C B^T precomputed) the next chunk's C and C B^T
//                     copies start after the output step instead of after the state
//                     update (one more barrier per chunk)
//   SSD_STATE_SPLIT   the state update's hi/lo split (below); defaults to SSD_FINAL
#ifndef SSD_UNROLL_STATE
#define SSD_UNROLL_STATE 1
#endif
#ifndef SSD_UNROLL_INTRA
#define SSD_UNROLL_INTRA 0
#endif
#ifndef SSD_EARLY_CB
#define SSD_EARLY_CB 1
#endif
// The hi/lo split of (w o x) keeps ~16 mantissa bits in the f32 state, which the
// final states need for their f32 budget. The outputs see the state only through
// its input-type copy (step 5), rounded to 8 (11) bits every chunk anyway, so
// without final states one mma per k-step does: the state then carries a relative
// error near the input type's rounding (~1e-3 for bf16, measured on the outputs in
// docs/kernels/mamba2-ssd.md), and the state update costs half the mma work. The
// prepass follows its main pass: its states reach the final states only through it.
#ifndef SSD_STATE_SPLIT
#define SSD_STATE_SPLIT SSD_FINAL
#endif
static_assert(N % 16 == 0 && N <= 256, "N must be a multiple of 16, at most 256");
static_assert(PT % 16 == 0 && P % PT == 0, "PT must divide P");
static_assert(PT % YC == 0 && YC % 16 == 0, "YC must divide PT");
static_assert(STAGES == 1 || STAGES == 2, "1 or 2 stages");

// Shared-memory row strides in elements: +8 (16 bytes) so that the 8 rows an
// ldmatrix phase reads fall in 8 different 16-byte bank groups.
constexpr int XS = PT + 8;
constexpr int BS = N + 8;

// State fragments: warps form a WM x WN grid over the PT x N state.
constexpr int WM = (NW < PT / 16) ? NW : PT / 16;
constexpr int WN = NW / WM;
constexpr int MT = PT / 16 / WM;  // 16-row tiles per warp
constexpr int NTL = N / 8 / WN;   // 8-column tiles per warp
static_assert(WM * WN == NW && MT * WM * 16 == PT && NTL * WN * 8 == N, "state split");

// Shared memory layout (bytes), one stage = x tile, B tile, C tile.
constexpr int X_BYTES = Q * XS * 2;
constexpr int B_BYTES = Q * BS * 2;
constexpr int C_BYTES = STATE_ONLY ? 0 : Q * BS * 2;
constexpr int CB_BYTES = CB_GLOBAL ? CB_TILES * 256 * 4 : 0;
constexpr int STAGE_BYTES = X_BYTES + B_BYTES + C_BYTES + CB_BYTES;
constexpr int S_BYTES = STATE_ONLY ? 0 : PT * BS * 2;
// s, dt' and w of a chunk. The main pass double-buffers them (warp 0 fills the
// next chunk's while the block works on this one); the prepass keeps 2 NW (each
// warp fills one chunk's in every group of NW, NW chunks ahead; see step 1).
constexpr int CUM_F32 = 3 * Q;
constexpr int CUM_BUFS = STATE_ONLY ? 2 * NW : 2;
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + S_BYTES + CUM_BUFS * CUM_F32 * 4;
// The device's opt-in shared memory per block, from the launcher (DeviceLimits);
// 227 KiB (sm_90) when built without it (the CPU emulation).
#ifndef SSD_MAX_SMEM
#define SSD_MAX_SMEM (227 * 1024)
#endif
static_assert(SMEM_BYTES <= SSD_MAX_SMEM, "shared memory past the device's per-block limit");

using Args = SsdArgs;  // ssd_common.cuh

// Which tiles of a chunk load_chunk copies.
enum ChunkParts { PARTS_ALL = 3, PARTS_X_B = 1, PARTS_C_CB = 2 };

// Issue the cp.async copies of one chunk (rows >= clen are zero-filled). FULL:
// clen == Q, no row checks (every chunk but a sequence's last).
template <bool FULL>
SSD_DEV void load_chunk_rows(const Args& a, unsigned char* stage, i64 tok, int clen, int h, int g,
                             int pt, i64 chunk, int parts) {
    const int tid = threadIdx.x;
    u16* xs = reinterpret_cast<u16*>(stage);
    u16* bs = reinterpret_cast<u16*>(stage + X_BYTES);
    u16* cs = reinterpret_cast<u16*>(stage + X_BYTES + B_BYTES);
    const i64 HP = (i64)a.H * P;
    const i64 GN = (i64)a.G * N;
    // Each thread copies one 16-byte column of a tile, every STEP-th row, walking a
    // pointer (64-bit index math once per chunk, not once per copy).
    constexpr int XV = PT / 8;  // 16-byte vectors per x row
    static_assert(NT % XV == 0, "x rows split evenly over the threads");
    if (parts & PARTS_X_B) {
        constexpr int STEP = NT / XV;
        const int r0 = tid / XV, c = (tid % XV) * 8;
        const elem_t* src = a.x + (tok + r0) * HP + (i64)h * P + pt * PT + c;
#pragma unroll
        for (int r = r0; r < Q; r += STEP, src += STEP * HP)
            cp_async16(xs + r * XS + c, FULL || r < clen ? src : a.x, FULL || r < clen ? 16 : 0);
    }
    constexpr int BV = N / 8;  // 16-byte vectors per B/C row
    static_assert(BV <= NT, "a B/C row within one pass of the threads");
    {
        // STEP rows per pass. Where BV does not divide NT (N = 48, 80, 96, ...) the
        // last NT - STEP * BV threads copy nothing (their first row is past Q); where
        // it does, the test folds away and the code is the even split's.
        constexpr int STEP = NT / BV;
        constexpr bool EVEN = NT % BV == 0;
        const int r0 = (EVEN || tid < STEP * BV) ? tid / BV : Q, c = (tid % BV) * 8;
        const i64 off0 = (tok + r0) * GN + (i64)g * N + c;
        const elem_t* bsrc = a.B + off0;
        const elem_t* csrc = a.C + off0;
#pragma unroll
        for (int r = r0; r < Q; r += STEP, bsrc += STEP * GN, csrc += STEP * GN) {
            const bool in = FULL || r < clen;
            if (parts & PARTS_X_B) cp_async16(bs + r * BS + c, in ? bsrc : a.B, in ? 16 : 0);
            if (!STATE_ONLY && (parts & PARTS_C_CB))
                cp_async16(cs + r * BS + c, in ? csrc : a.C, in ? 16 : 0);
        }
    }
    if (CB_GLOBAL && (parts & PARTS_C_CB)) {
        float* cbs = reinterpret_cast<float*>(stage + X_BYTES + B_BYTES + C_BYTES);
        const float* src = a.cbw + (chunk * a.G + g) * (CB_TILES * 256);
#pragma unroll
        for (int v = tid; v < CB_TILES * 64; v += NT) cp_async16(cbs + v * 4, src + v * 4, 16);
    }
}

SSD_DEV void load_chunk(const Args& a, unsigned char* stage, i64 tok, int clen, int h, int g,
                        int pt, i64 chunk, int parts = PARTS_ALL) {
    if (clen == Q)
        load_chunk_rows<true>(a, stage, tok, clen, h, g, pt, chunk, parts);
    else
        load_chunk_rows<false>(a, stage, tok, clen, h, g, pt, chunk, parts);
}

// dt of one chunk, V consecutive steps per lane, prefetched into registers.
template <int V>
SSD_DEV void load_dt(const Args& a, float (&dtr)[V], i64 tok, int clen, int h) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int v = 0; v < V; ++v) {
        const int j = lane * V + v;
        dtr[v] = j < clen ? elem_to_f32(a.dt[(tok + j) * a.H + h]) : 0.0f;
    }
}

// Step 1: dt', s (inclusive cumulative log2-decay) and w of the chunk into this
// warp's arrays. Rows past clen get dt' = 0: no decay, no contribution.
template <int V>
SSD_DEV float chunk_cumsum(const float (&dtr)[V], int clen, float bias, float A2, float dt_min,
                           float dt_max, float* s_w, float* dtp_w, float* w_w) {
    const int lane = threadIdx.x & 31;
    float dtp[V], pre[V], run;
    const float incl = ssd_warp_cumsum<V>(
        lane, clen, A2, [&](int, int v) { return ssd_dt(dtr[v], bias, dt_min, dt_max); }, dtp,
        pre, run);
    const float excl = incl - run;
    const float s_last = __shfl_sync(0xffffffffu, incl, 31);
#pragma unroll
    for (int v = 0; v < V; ++v) {
        const int j = lane * V + v;
        const float s = excl + pre[v];
        s_w[j] = s;
        dtp_w[j] = dtp[v];
        w_w[j] = ssd_exp2(s_last - s) * dtp[v];
    }
    __syncwarp();
    return s_last;
}

// The output tile of a unit leaves through shared memory (16-byte coalesced
// stores, no per-store address arithmetic) when its warp owns the unit's C rows
// outright: one unit per row tile (YC == PT), so no other warp reads those rows,
// and rows long enough to hold YC outputs.
constexpr bool STAGED_STORE = YC == PT && BS >= YC;

// Steps 2-3 for one unit: rows [16 rt, 16 rt + 16) x columns [YC cg, YC cg + YC).
SSD_DEV void chunk_output(const Args& a, const u16* xs, const u16* bs, u16* cs,
                          const float* cbs, const u16* ss, const float* s_w, const float* dtp_w,
                          int rt, int cg, bool have_state, i64 tok, int clen, int h, int pt,
                          float d_head) {
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    // ldmatrix row/column offsets: pattern 1 serves A from [m][k] and B from [k][n]
    // (.trans); pattern 2 serves B from [n][k] and A from [k][m] (.trans).
    const int r1 = (lane & 7) + ((lane >> 3) & 1) * 8, c1 = (lane >> 4) * 8;
    const int r2 = (lane & 7) + (lane >> 4) * 8, c2 = ((lane >> 3) & 1) * 8;
    const int i0 = rt * 16;
    const i64 HP = (i64)a.H * P;

#if SSD_HAS_Z
    // The gate's loads go out first, so that the mma work below hides their
    // latency (with C B^T formed in-block there are no registers to spare for them).
    u32 zr[YC / 8][2];
    if (Z_PREFETCH) {
        const elem_t* zrow = a.z + (tok + i0 + g) * HP + (i64)h * P + pt * PT + cg * YC + 2 * t;
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const bool in = i0 + g + 8 * hr < clen;
#pragma unroll
            for (int n = 0; n < YC / 8; ++n)
                zr[n][hr] = in ? *reinterpret_cast<const u32*>(zrow + 8 * hr * HP + n * 8) : 0u;
        }
    }
#endif

    float acc[YC / 8][4];
#pragma unroll
    for (int n = 0; n < YC / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    if (have_state) {
        // Inter-chunk: C (16 x N) times S^T (N x YC), S stored [p][n].
#pragma unroll 4
        for (int ks = 0; ks < N / 16; ++ks) {
            u32 af[4];
            ldsm_x4(af, cs + (i0 + r1) * BS + ks * 16 + c1);
#pragma unroll
            for (int np = 0; np < YC / 16; ++np) {
                u32 bf[4];
                ldsm_x4(bf, ss + (cg * YC + np * 16 + r2) * BS + ks * 16 + c2);
                mma16816(acc[2 * np], af, bf[0], bf[1]);
                mma16816(acc[2 * np + 1], af, bf[2], bf[3]);
            }
        }
        const float e0 = ssd_exp2(s_w[i0 + g]), e1 = ssd_exp2(s_w[i0 + g + 8]);
#pragma unroll
        for (int n = 0; n < YC / 8; ++n) {
            acc[n][0] *= e0;
            acc[n][1] *= e0;
            acc[n][2] *= e1;
            acc[n][3] *= e1;
        }
    }

    // Intra-chunk, 16 columns j at a time up to the diagonal.
    const float si0 = s_w[i0 + g], si1 = s_w[i0 + g + 8];
#if SSD_UNROLL_INTRA
#pragma unroll
    for (int jt = 0; jt < RT; ++jt) {
        if (jt > rt) break;
#else
    for (int jt = 0; jt <= rt; ++jt) {
#endif
        const int j0 = jt * 16;
        float cb[2][4];
        if (CB_GLOBAL) {
            const float* tile = cbs + SSD_CB_TILE(rt, jt) * 256 + lane * 4;
            const float4 lo = *reinterpret_cast<const float4*>(tile);
            const float4 hi = *reinterpret_cast<const float4*>(tile + 128);
            cb[0][0] = lo.x, cb[0][1] = lo.y, cb[0][2] = lo.z, cb[0][3] = lo.w;
            cb[1][0] = hi.x, cb[1][1] = hi.y, cb[1][2] = hi.z, cb[1][3] = hi.w;
        } else {
            // Two accumulator pairs over alternate k-steps: chains half as long.
            float cb2[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
            for (int e = 0; e < 4; ++e) cb[0][e] = cb[1][e] = 0.0f;
#pragma unroll 2
            for (int ks = 0; ks < N / 16; ks += 2) {
                u32 af[4], bf[4];
                ldsm_x4(af, cs + (i0 + r1) * BS + ks * 16 + c1);
                ldsm_x4(bf, bs + (j0 + r2) * BS + ks * 16 + c2);
                mma16816(cb[0], af, bf[0], bf[1]);
                mma16816(cb[1], af, bf[2], bf[3]);
                if (ks + 1 < N / 16) {
                    ldsm_x4(af, cs + (i0 + r1) * BS + (ks + 1) * 16 + c1);
                    ldsm_x4(bf, bs + (j0 + r2) * BS + (ks + 1) * 16 + c2);
                    mma16816(cb2[0], af, bf[0], bf[1]);
                    mma16816(cb2[1], af, bf[2], bf[3]);
                }
            }
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                cb[0][e] += cb2[0][e];
                cb[1][e] += cb2[1][e];
            }
        }
        // L_ij = CB_ij exp2(s_i - s_j) dt'_j for j <= i, else 0 (mask before exp).
        const bool diag = jt == rt;
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int jl = hf * 8 + 2 * t + e;  // column within the tile
                const float sj = s_w[j0 + jl], dj = dtp_w[j0 + jl];
                const bool ok0 = !diag || jl <= g;
                const bool ok1 = !diag || jl <= g + 8;
                cb[hf][e] = ok0 ? cb[hf][e] * ssd_exp2(si0 - sj) * dj : 0.0f;
                cb[hf][2 + e] = ok1 ? cb[hf][2 + e] * ssd_exp2(si1 - sj) * dj : 0.0f;
            }
        }
        u32 lf[4];
        lf[0] = pack2(cb[0][0], cb[0][1]);
        lf[1] = pack2(cb[0][2], cb[0][3]);
        lf[2] = pack2(cb[1][0], cb[1][1]);
        lf[3] = pack2(cb[1][2], cb[1][3]);
#pragma unroll
        for (int np = 0; np < YC / 16; ++np) {
            u32 bf[4];
            ldsm_x4_trans(bf, xs + (j0 + r1) * XS + cg * YC + np * 16 + c1);
            mma16816(acc[2 * np], lf, bf[0], bf[1]);
            mma16816(acc[2 * np + 1], lf, bf[2], bf[3]);
        }
    }

    // Epilogue: + D x, z gate, store. Each thread owns column pairs (2t, 2t+1) of
    // every 8-column tile.
    const u16* const x_row = xs + (i0 + g) * XS + cg * YC + 2 * t;
#if SSD_D_MODE == 2
    const float* const d_cols = a.D + (i64)h * P + pt * PT + cg * YC + 2 * t;
#endif
#if SSD_HAS_Z
    const elem_t* const z_row = a.z + (tok + i0 + g) * HP + (i64)h * P + pt * PT + cg * YC + 2 * t;
#endif
    // The packed outputs of rows g + 8 hr, columns (n, 2t .. 2t + 1).
    auto finish = [&](int n, int hr) {
        float y0 = acc[n][2 * hr], y1 = acc[n][2 * hr + 1];
#if SSD_D_MODE != 0
#if SSD_D_MODE == 1
        const float d0 = d_head, d1 = d_head;
#else
        const float d0 = d_cols[n * 8], d1 = d_cols[n * 8 + 1];
#endif
        const u32 xv = *reinterpret_cast<const u32*>(x_row + 8 * hr * XS + n * 8);
        y0 += d0 * unpack_lo(xv);
        y1 += d1 * unpack_hi(xv);
#endif
#if SSD_HAS_Z
        u32 zv;
        if (Z_PREFETCH) {
            zv = zr[n][hr];
        } else {
            zv = i0 + g + 8 * hr < clen
                     ? *reinterpret_cast<const u32*>(z_row + 8 * hr * HP + n * 8)
                     : 0u;
        }
        y0 *= silu(unpack_lo(zv));
        y1 *= silu(unpack_hi(zv));
#endif
        return pack2(y0, y1);
    };
    if constexpr (STAGED_STORE) {
        // Into this warp's C rows (no longer read), then out 16 bytes per lane: a
        // pass writes RPP whole rows of YC outputs.
        u16* const tile = cs + i0 * BS;
        __syncwarp();
#pragma unroll
        for (int n = 0; n < YC / 8; ++n)
#pragma unroll
            for (int hr = 0; hr < 2; ++hr)
                *reinterpret_cast<u32*>(tile + (g + 8 * hr) * BS + n * 8 + 2 * t) = finish(n, hr);
        __syncwarp();
        constexpr int VPR = YC / 8;   // 16-byte vectors per row
        constexpr int RPP = 32 / VPR;  // rows per pass
        const int rr = lane / VPR, cc = (lane % VPR) * 8;
        elem_t* dst = a.out + (tok + i0 + rr) * HP + (i64)h * P + pt * PT + cg * YC + cc;
#pragma unroll
        for (int r = rr; r < 16; r += RPP, dst += RPP * HP) {
            const uint4 v = *reinterpret_cast<const uint4*>(tile + r * BS + cc);
            if (i0 + r < clen) store_b32x4(dst, v);
        }
    } else {
        // Lane pairs swap one packed pair so that each stores 4 consecutive columns
        // (8 bytes): a quad then writes whole 32-byte sectors.
        const bool even = (t & 1) == 0;
        const int store_col = even ? 2 * t : 8 + 2 * (t - 1);  // within a pair of tiles
        elem_t* const out_row =
            a.out + (tok + i0 + g) * HP + (i64)h * P + pt * PT + cg * YC + store_col;
#pragma unroll
        for (int n = 0; n < YC / 8; n += 2) {
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const u32 p0 = finish(n, hr), p1 = finish(n + 1, hr);
                // Even lanes keep tile n and take their partner's pair of it; odd
                // lanes keep tile n + 1 and take their partner's pair of that.
                const u32 got = __shfl_xor_sync(0xffffffffu, even ? p1 : p0, 1);
                const u32 lo = even ? p0 : got, hi = even ? got : p1;
                if (i0 + g + 8 * hr < clen) store_b32x2(out_row + 8 * hr * HP + n * 8, lo, hi);
            }
        }
    }
}

// Element (row p, column n) of state fragment (mi, nt, e) for this thread.
SSD_DEV int frag_p(int wm, int mi, int e) {
    const int lane = threadIdx.x & 31;
    return (wm * MT + mi) * 16 + (lane >> 2) + (e >= 2 ? 8 : 0);
}
SSD_DEV int frag_n(int wn, int nt, int e) {
    const int lane = threadIdx.x & 31;
    return (wn * NTL + nt) * 8 + 2 * (lane & 3) + (e & 1);
}

// The state's fragments as 16-bit pairs into ss (P x BS), where the output
// step reads them: the initial state and every chunk's updated one go through
// this one layout.
SSD_DEV void state_to_shared(const float (&S)[MT][NTL][4], u16* ss, int wm, int wn) {
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int n = 0; n < NTL; ++n)
#pragma unroll
            for (int hr = 0; hr < 2; ++hr)
                *reinterpret_cast<u32*>(ss + frag_p(wm, mi, 2 * hr) * BS + frag_n(wn, n, 0)) =
                    pack2(S[mi][n][2 * hr], S[mi][n][2 * hr + 1]);
}

// Step 4: S = exp2(s_last) S + (w o x)^T B over the chunk's first `clen` rows.
SSD_DEV void chunk_state(float (&S)[MT][NTL][4], const u16* xs, const u16* bs, const float* w_w,
                         float dec, int clen, int wm, int wn) {
    const int lane = threadIdx.x & 31;
    const int t = lane & 3;
    const int r1 = (lane & 7) + ((lane >> 3) & 1) * 8, c1 = (lane >> 4) * 8;
    const int r2 = (lane & 7) + (lane >> 4) * 8, c2 = ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int n = 0; n < NTL; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) S[mi][n][e] *= dec;

#if SSD_UNROLL_STATE
    // All Q/16 k-steps, unrolled so that one step's fragment loads and hi/lo
    // splits overlap the previous step's mmas. Rows past clen add zero: their x
    // rows are zero-filled and their weights are 0.
    (void)clen;
#pragma unroll
    for (int ks = 0; ks < Q / 16; ++ks) {
#else
    const int ksteps = (clen + 15) / 16;
    for (int ks = 0; ks < ksteps; ++ks) {
#endif
        const int k0 = ks * 16;
        const float w0 = w_w[k0 + 2 * t], w1 = w_w[k0 + 2 * t + 1];
        const float w2 = w_w[k0 + 2 * t + 8], w3 = w_w[k0 + 2 * t + 9];
        u32 ahi[MT][4], alo[MT][4];
#pragma unroll
        for (int mi = 0; mi < MT; ++mi) {
            u32 xf[4];
            // A[m = p][k = j] from x stored [j][p]: pattern 2, transposed.
            ldsm_x4_trans(xf, xs + (k0 + r2) * XS + (wm * MT + mi) * 16 + c2);
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const float wl = r < 2 ? w0 : w2, wh = r < 2 ? w1 : w3;
                const float v0 = unpack_lo(xf[r]) * wl, v1 = unpack_hi(xf[r]) * wh;
                const u32 hi = pack2(v0, v1);
                ahi[mi][r] = hi;
                alo[mi][r] = SSD_STATE_SPLIT ? pack2(v0 - unpack_lo(hi), v1 - unpack_hi(hi)) : 0u;
            }
        }
        if constexpr (NTL % 2 == 0) {
#pragma unroll
            for (int np = 0; np < NTL / 2; ++np) {
                u32 bf[4];
                // B[k = j][n] from B stored [j][n]: pattern 1, transposed.
                ldsm_x4_trans(bf, bs + (k0 + r1) * BS + (wn * NTL + 2 * np) * 8 + c1);
                // hi halves of both tiles first, so that no mma waits on the one before.
#pragma unroll
                for (int mi = 0; mi < MT; ++mi) {
                    mma16816(S[mi][2 * np], ahi[mi], bf[0], bf[1]);
                    mma16816(S[mi][2 * np + 1], ahi[mi], bf[2], bf[3]);
                }
#pragma unroll
                for (int mi = 0; mi < MT && SSD_STATE_SPLIT; ++mi) {
                    mma16816(S[mi][2 * np], alo[mi], bf[0], bf[1]);
                    mma16816(S[mi][2 * np + 1], alo[mi], bf[2], bf[3]);
                }
            }
        } else {
#pragma unroll
            for (int n = 0; n < NTL; ++n) {
                u32 bf[2];
                ldsm_x2_trans(bf, bs + (k0 + (lane & 15)) * BS + (wn * NTL + n) * 8);
#pragma unroll
                for (int mi = 0; mi < MT; ++mi) {
                    mma16816(S[mi][n], ahi[mi], bf[0], bf[1]);
                    if (SSD_STATE_SPLIT) mma16816(S[mi][n], alo[mi], bf[0], bf[1]);
                }
            }
        }
    }
}

}  // namespace ssd_fused

#ifndef SSD_MIN_BLOCKS
#define SSD_MIN_BLOCKS 1
#endif

extern "C" __global__ void __launch_bounds__(ssd_fused::NT, SSD_MIN_BLOCKS)
    ssd_fused_fwd(const SsdArgs a) {
    using namespace ssd_fused;
    SSD_UNPACK_ARGS(a);
    SSM_DYNAMIC_SMEM(smem);

    constexpr int NPT = P / PT;
    SSD_UNPACK_ITEM(NPT);
    const i64 chunk0 = items[item + SSD_ITEM_CHUNK];
    const int g = h / (H / G);

    const int warp = threadIdx.x >> 5;
    const int wm = warp % WM, wn = warp / WM;
    unsigned char* stages = smem;
    u16* ss = reinterpret_cast<u16*>(smem + STAGES * STAGE_BYTES);
    // cum[b]: s, dt', w of the chunks c with c % CUM_BUFS == b.
    float* const cum = reinterpret_cast<float*>(smem + STAGES * STAGE_BYTES + S_BYTES);

    const float A2 = A[h] * SSD_LOG2E;
    // The per-head skip weight, read once (the epilogue would wait on it every chunk).
    const float d_head = SSD_D_MODE == 1 ? D[h] : 0.0f;
    const float bias = SSD_DT_BIAS ? dt_bias[h] : 0.0f;
    const i64 PN = (i64)P * N;

    // Initial state: the given one for segment 0, else the decayed sum of the
    // earlier segments' states from the prepass.
    float S[MT][NTL][4];
    bool have_state = false;
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int n = 0; n < NTL; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) S[mi][n][e] = 0.0f;
    if (!STATE_ONLY) {
#if SSD_HAS_S0
        const float* src = s0 + (seq * H + h) * PN;
#pragma unroll
        for (int mi = 0; mi < MT; ++mi)
#pragma unroll
            for (int n = 0; n < NTL; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    S[mi][n][e] =
                        src[(i64)(pt * PT + frag_p(wm, mi, e)) * N + frag_n(wn, n, e)];
        have_state = true;
#endif
        for (int m = 0; m < seg; ++m) {
            const float d = exp2f(ws_decay[(ws0 + m) * H + h]);
            const float* src = ws_states + ((ws0 + m) * H + h) * PN;
#pragma unroll
            for (int mi = 0; mi < MT; ++mi)
#pragma unroll
                for (int n = 0; n < NTL; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        S[mi][n][e] = d * S[mi][n][e] +
                                      src[(i64)(pt * PT + frag_p(wm, mi, e)) * N +
                                          frag_n(wn, n, e)];
            have_state = true;
        }
        if (have_state) state_to_shared(S, ss, wm, wn);
    }

    // Step 1 runs ahead of the walk, with dt read from global memory one step 1
    // before its own. Main pass: on warp 0 (the lightest share of the causal output
    // work), one chunk ahead, into cum[(c + 1) % 2] while the block works on chunk
    // c. Prepass: with no output work to hide it behind, one warp's step 1 per
    // chunk held the whole block at its barrier (a third of the prepass's time,
    // ncu), so every warp computes one chunk's in each group of NW, NW chunks ahead.
    constexpr int V = Q / 32;
    float dtr[V];
    const int nchunks = (int)((len + Q - 1) / Q);
    auto chunk_len = [&](int c) { return (int)((len - (i64)c * Q) < Q ? (len - (i64)c * Q) : Q); };
    auto step1 = [&](int c, int next) {  // this warp: step 1 of chunk c, then dt of chunk next
        float* dst = cum + (c % CUM_BUFS) * CUM_F32;
        chunk_cumsum<V>(dtr, chunk_len(c), bias, A2, dt_min, dt_max, dst, dst + Q, dst + 2 * Q);
        if (next < nchunks) load_dt<V>(a, dtr, tok0 + (i64)next * Q, chunk_len(next), h);
    };
    float dec_total = 0.0f;
    if (nchunks > 0) {
        load_chunk(a, stages, tok0, chunk_len(0), h, g, pt, chunk0);
        cp_async_commit();
        const int first = STATE_ONLY ? warp : 0;  // this warp's first step 1, if any
        if ((STATE_ONLY || warp == 0) && first < nchunks) {
            load_dt<V>(a, dtr, tok0 + (i64)first * Q, chunk_len(first), h);
            step1(first, first + (STATE_ONLY ? NW : 1));
        }
    }
    for (int c = 0; c < nchunks; ++c) {
        const i64 tok = tok0 + (i64)c * Q;
        const int clen = chunk_len(c);
        unsigned char* stage = stages + (STAGES == 2 ? (c & 1) : 0) * STAGE_BYTES;
        if (STAGES == 2 && c + 1 < nchunks) {
            load_chunk(a, stages + ((c + 1) & 1) * STAGE_BYTES, tok + Q, chunk_len(c + 1), h, g, pt,
                       chunk0 + c + 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // this chunk's tiles, its s/dt'/w and the state in ss are visible

        const float* s_w = cum + (c % CUM_BUFS) * CUM_F32;
        const float* dtp_w = s_w + Q;
        const float* w_w = s_w + 2 * Q;
        // Rows past clen have dt' = 0, so the last entry is the chunk's total.
        const float s_last = s_w[Q - 1];
        dec_total += s_last;

        const u16* xs = reinterpret_cast<const u16*>(stage);
        const u16* bs = reinterpret_cast<const u16*>(stage + X_BYTES);
        u16* cs = reinterpret_cast<u16*>(stage + X_BYTES + B_BYTES);
        const float* cbs = reinterpret_cast<const float*>(stage + X_BYTES + B_BYTES + C_BYTES);
        if (!STATE_ONLY) {
            // Units (row tile, column group), dealt in a snake order so that every
            // warp gets a similar share of the causal (triangular) work.
            constexpr int YCG = PT / YC;
            constexpr int UNITS = (Q / 16) * YCG;
            for (int k = 0; k * NW < UNITS; ++k) {
                const int u = (k & 1) ? k * NW + (NW - 1 - warp) : k * NW + warp;
                if (u >= UNITS) continue;
                chunk_output(a, xs, bs, cs, cbs, ss, s_w, dtp_w, u / YCG, u % YCG, have_state,
                             tok, clen, h, pt, d_head);
            }
        }
        // The buffers written here were last read in chunk c - 1 or earlier, before
        // its closing barrier, and are next read after this chunk's.
        if (STATE_ONLY) {
            const int mine = c + NW + warp;
            if (c % NW == 0 && mine < nchunks) step1(mine, mine + NW);
        } else if (warp == 0 && c + 1 < nchunks) {
            step1(c + 1, c + 2);
        }
        // The next chunk's C and C B^T may overwrite this stage's once every warp is
        // past the output step; x and B stay until the state update is done.
        constexpr bool EARLY = SSD_EARLY_CB && STAGES == 1 && CB_GLOBAL;
        const bool early = EARLY && c + 1 < nchunks;
        if (early) {
            __syncthreads();
            load_chunk(a, stages, tok + Q, chunk_len(c + 1), h, g, pt, chunk0 + c + 1, PARTS_C_CB);
            cp_async_commit();
        }
        chunk_state(S, xs, bs, w_w, ssd_exp2(s_last), clen, wm, wn);
        have_state = true;
        __syncthreads();  // everyone is done reading this stage and ss

        if (!STATE_ONLY) state_to_shared(S, ss, wm, wn);
        if (STAGES == 1 && c + 1 < nchunks) {
            load_chunk(a, stages, tok + Q, chunk_len(c + 1), h, g, pt, chunk0 + c + 1,
                       early ? PARTS_X_B : PARTS_ALL);
            cp_async_commit();
        }
    }

    // Outputs of the walk: the segment state for the prepass, the final state of
    // the sequence for its last segment.
    float* dst = nullptr;
    if (STATE_ONLY) {
        dst = ws_states + ((ws0 + seg) * H + h) * PN;
        if (threadIdx.x == 0 && pt == 0) ws_decay[(ws0 + seg) * H + h] = dec_total;
    } else {
#if SSD_FINAL
        if (seg == nseg - 1) dst = final_states + (seq * H + h) * PN;
#endif
    }
    if (dst != nullptr) {
#pragma unroll
        for (int mi = 0; mi < MT; ++mi)
#pragma unroll
            for (int n = 0; n < NTL; ++n)
#pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    float* p = dst + (i64)(pt * PT + frag_p(wm, mi, 2 * hr)) * N + frag_n(wn, n, 0);
                    p[0] = S[mi][n][2 * hr];
                    p[1] = S[mi][n][2 * hr + 1];
                }
    }
}
