// v3 of the SSD backward's two heavy stages (included by ssd_bwd.cu with
// SSD_BWD_TILED=1; notes: docs/kernels/mamba2-ssd-bwd.md, "v3"). Same entry
// points, grids, workspaces and arithmetic (f32, the formulas of
// docs/BACKWARD-SSD.md §5) as v1's ssd_bwd_chunk and ssd_bwd_grad, restructured
// so that every product is a shared-memory tile product:
//
//   ssd_bwd_chunk  the chunk's x, d_out silu(z), B and C staged once in shared
//                  memory (pre-scaled by the decay weights); R_c and the
//                  C-term_c as (P x Q) (Q x N) products.
//   ssd_bwd_grad   dy, x, C B^T o E and dy x^T staged per block; S C and G B,
//                  dx, the pre-gate y (for dz), per-head dC and dB as tile
//                  products over N tiles of 64 staged with S and G; the
//                  log-decay gradients from row prefix sums of the pair terms.
//
// Every product goes through `tile_mm`: a 64 x 64 output tile over the block's
// 256 threads, each thread holding a 4 x 4 register tile and reading four
// float4 of each operand per four k-steps (8 LDS.128 for 64 FMA). v1 read its
// operands per element through L1 with 32-way strided lanes and recomputed a
// decay per multiply-add, which is what made it 160 ms at M2-2.7B.
//
// Deterministic: every element has one writer and every sum runs in a fixed
// order (k in order inside tile_mm, fixed shuffle trees, rows and columns in
// index order), so reruns are bit-identical (the bits differ from v1's: the
// order of the sums is not v1's).
//
// Scope: Q = 64, P 64 or 128, N a multiple of 64 up to 256 (BwdConfig routes
// other shapes to v1 and says so).

namespace ssd_bwd3 {
using ssd_bwd::N;
using ssd_bwd::NT;
using ssd_bwd::P;
using ssd_bwd::Q;
static_assert(Q == 64, "the tiled backward runs chunks of 64");
static_assert(P % 64 == 0 && P <= 128, "the tiled backward needs P = 64 or 128");
static_assert(N % 64 == 0 && N <= 256, "the tiled backward needs N a multiple of 64, at most 256");
static_assert(NT == 256, "tile_mm spreads a 64 x 64 tile over 256 threads");

// Row strides in floats: 4 (mod 32) so that the rows a quarter-warp reads with
// LDS.128 fall in distinct banks, and a multiple of 4 for 16-byte alignment.
constexpr int LD = 64 + 4;
constexpr int LDP = P + 4;
constexpr int LDN = N + 4;
constexpr int PT = P / 64;  // 64-wide tiles of the head dimension
constexpr int NTL = N / 64;  // 64-wide tiles of the state dimension

// ssd_bwd_chunk's shared memory (floats): s, dt'; x and dy pre-scaled, (Q, P);
// B and C, (Q, N).
constexpr int CHUNK_SMEM_FLOATS = 2 * Q + 2 * Q * LDP + 2 * Q * LDN;
// ssd_bwd_grad's (floats): 8 per-token vectors, a 256-float reduction buffer;
// dy and x (Q, P); C B^T o E and dy x^T (later W), (Q, Q); then a region that
// holds, in turn, the N-tile stage (C, B: (Q, 64); S, G: (P, 64)) and the
// results S C, G B (Q, P) with the row prefix sums of the pair terms (Q, Q).
constexpr int STAGE_FLOATS = (2 * Q + 2 * P) * LD;
constexpr int RESULT_FLOATS = 2 * Q * LDP + Q * LD;
constexpr int REGION_FLOATS = STAGE_FLOATS > RESULT_FLOATS ? STAGE_FLOATS : RESULT_FLOATS;
constexpr int GRAD_SMEM_FLOATS = 8 * Q + NT + 2 * Q * LDP + 2 * Q * LD + REGION_FLOATS;
#if SSD_BWD_TC
// v4 keeps the products' operands as bf16 planes (mma_tile below), u16 row
// strides PL*: ssd_bwd_chunk holds s, dt' and the planes of xw, dye (three
// each), B and C (one each); ssd_bwd_grad adds to v3's f32 arrays the planes of
// dy (three), x (one) and W (two), and its region holds, in turn, the N-tile
// stage as planes (C, B: one each; S, G: three each) and v3's results.
static_assert(SSD_DTYPE == 2, "the tensor-core tiles take bf16 inputs (exact single planes)");
static_assert(P == 64, "the tensor-core tiles run P = 64 (other P: v3)");
// Plane rows padded by 8 u16 (16 bytes), so that the eight rows an ldmatrix
// reads fall in distinct 16-byte bank groups.
constexpr int PLP = P + 8;
constexpr int PLN = N + 8;
constexpr int PLQ = Q + 8;
constexpr int PL64 = 64 + 8;
constexpr int CHUNK_SMEM_BYTES = 4 * 2 * Q + 2 * (6 * Q * PLP + 2 * Q * PLN);
constexpr int GRAD_F32_FLOATS = 8 * Q + NT + 2 * Q * LDP + 2 * Q * LD;
constexpr int GRAD_PLANE_U16 = 4 * Q * PLP + 2 * Q * PLQ;
constexpr int STAGE_TC_BYTES = 2 * (2 * Q * PL64 + 6 * P * PL64);
constexpr int RESULT_BYTES = 4 * RESULT_FLOATS;
constexpr int GRAD_SMEM_BYTES =
    4 * GRAD_F32_FLOATS + 2 * GRAD_PLANE_U16 + (STAGE_TC_BYTES > RESULT_BYTES ? STAGE_TC_BYTES : RESULT_BYTES);
#else
constexpr int CHUNK_SMEM_BYTES = 4 * CHUNK_SMEM_FLOATS;
constexpr int GRAD_SMEM_BYTES = 4 * GRAD_SMEM_FLOATS;
#endif
// The host computes the same sizes (BwdConfig::tiled_smem_bytes in
// crates/mamba2-ssd/src/cuda/backward.rs) and passes them: a layout change on
// one side only fails to compile.
#if defined(SSD_BWD_CHUNK_SMEM) && defined(SSD_BWD_GRAD_SMEM)
static_assert(SSD_BWD_CHUNK_SMEM == CHUNK_SMEM_BYTES, "ssd_bwd_chunk smem: host and kernel disagree");
static_assert(SSD_BWD_GRAD_SMEM == GRAD_SMEM_BYTES, "ssd_bwd_grad smem: host and kernel disagree");
#endif

SSD_DEV float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
SSD_DEV void st4(float* p, float a, float b, float c, float d) {
    float4 v;
    v.x = a;
    v.y = b;
    v.z = c;
    v.w = d;
    *reinterpret_cast<float4*>(p) = v;
}
SSD_DEV void st4(float* p, const float* v) { st4(p, v[0], v[1], v[2], v[3]); }
SSD_DEV void st2(float* p, float a, float b) {
    float2 v;
    v.x = a;
    v.y = b;
    *reinterpret_cast<float2*>(p) = v;
}
SSD_DEV float lane4(const float4& v, int u) { return u == 0 ? v.x : u == 1 ? v.y : u == 2 ? v.z : v.w; }

// This thread's place in a 64 x 64 tile: rows 4 ti .. 4 ti + 3 (a quad; ti is
// uniform over 16 lanes, so A's reads are broadcasts); columns by tj, a quad
// 4 tj .. 4 tj + 3 when B is stored n-contiguous, or tj + 16 c when B is stored
// k-contiguous (then consecutive lanes read consecutive rows of B).
SSD_DEV int tile_row(int r) { return 4 * (int)(threadIdx.x / 16) + r; }
template <bool B_KMAJOR>
SSD_DEV int tile_col(int c) {
    const int tj = threadIdx.x % 16;
    return B_KMAJOR ? tj + 16 * c : 4 * tj + c;
}

// acc[r][c] += sum_{k < K} A(tile_row(r), k) ks[k] B(k, tile_col(c)), k in order.
// A(m, k) is A[m lda + k] when A_KMAJOR, else A[k lda + m]; B(k, n) is
// B[n ldb + k] when B_KMAJOR, else B[k ldb + n]. K % 4 == 0; lda, ldb % 4 == 0.
template <bool A_KMAJOR, bool B_KMAJOR, bool KSCALE>
SSD_DEV void tile_mm(float acc[4][4], const float* A, int lda, const float* Bm, int ldb, int K,
                     const float* ks) {
    const int m0 = tile_row(0);
    const int tj = threadIdx.x % 16;
    for (int k = 0; k < K; k += 4) {
        float a[4][4], b[4][4];  // a[r][u] = A(m0 + r, k + u) ks[k + u], b[c][u] = B(k + u, col c)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float4 v = A_KMAJOR ? ld4(A + (m0 + i) * lda + k) : ld4(A + (k + i) * lda + m0);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (A_KMAJOR)
                    a[i][j] = lane4(v, j);
                else
                    a[j][i] = lane4(v, j);
            }
        }
        if (KSCALE) {
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const float s = ks[k + u];
#pragma unroll
                for (int r = 0; r < 4; ++r) a[r][u] *= s;
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float4 v = B_KMAJOR ? ld4(Bm + (tj + 16 * i) * ldb + k) : ld4(Bm + (k + i) * ldb + 4 * tj);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (B_KMAJOR)
                    b[i][j] = lane4(v, j);
                else
                    b[j][i] = lane4(v, j);
            }
        }
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int c = 0; c < 4; ++c)
#pragma unroll
                for (int u = 0; u < 4; ++u) acc[r][c] = fmaf(a[r][u], b[c][u], acc[r][c]);
    }
}

// --- Staging: global rows into shared f32 rows, loads first -------------------
//
// v3 staged one element per loop iteration, and ptxas kept each iteration's
// global load behind the previous iteration's shared store: one global latency
// per element and thread, at one block per SM (ssd_bwd_grad) nothing to cover
// it. `stage_rows` issues every load of a thread (16-byte vectors of each
// source) before the first conversion and store.

// Compile-time helpers: NVRTC takes an unannotated function for a host one.
#ifdef SSD_EMULATE
#define SSD_CONSTEXPR constexpr
#else
#define SSD_CONSTEXPR __host__ __device__ constexpr
#endif

// Elements of type T in one 16-byte vector.
template <typename T>
SSD_CONSTEXPR int vec_len() {
    return 16 / (int)sizeof(T);
}

// The 16 bytes at p (16-byte aligned: the backward's buffers are owned
// allocations) as vec_len<T>() f32 values.
SSD_DEV void ld_vec(const float* p, float v[4]) {
    const float4 r = ld4(p);
    v[0] = r.x;
    v[1] = r.y;
    v[2] = r.z;
    v[3] = r.w;
}
SSD_DEV void ld_vec(const u16* p, float v[8]) {
    uint4 r;
#ifdef SSD_EMULATE
    std::memcpy(&r, p, sizeof r);
#else
    r = *reinterpret_cast<const uint4*>(p);
#endif
    const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        v[2 * i] = unpack_lo(w[i]);
        v[2 * i + 1] = unpack_hi(w[i]);
    }
}

// What stage_rows hands to its `put` per vector: the f32 values of each source.
template <int NSRC, typename T>
using Staged = float[NSRC][vec_len<T>()];

// The largest divisor of `units` that is at most `fit` (at least 1).
SSD_CONSTEXPR int batch_of(int units, int fit) {
    int b = fit < 1 ? 1 : (fit > units ? units : fit);
    while (units % b != 0) --b;
    return b;
}

// For every row r < ROWS and 16-byte column group of a ROWS x W block of NSRC
// row-major global matrices (row r of source s at src[s] + r * src_ld; rows
// r >= valid read as zeros, never loaded): put(r, col, v) with v[s][e] the
// f32 value of source s at (r, col + e), e < vec_len<T>(). Block-wide; the
// units are spread over the threads in index order. FLOATS bounds the
// registers a thread's loads in flight take.
template <int ROWS, int W, int NSRC, typename T, typename Put, int FLOATS = 64>
SSD_DEV void stage_rows(const T* const* src, i64 src_ld, int valid, Put put) {
    constexpr int V = vec_len<T>();
    static_assert(W % V == 0, "rows are staged in whole 16-byte vectors");
    constexpr int PER_ROW = W / V;
    constexpr int UNITS = ROWS * PER_ROW;
    static_assert(UNITS % NT == 0, "every thread stages the same number of vectors");
    constexpr int U = UNITS / NT;
    // Vectors in flight per thread: as many as FLOATS f32 registers hold (the
    // largest divisor of U that fits), so that wide stages do not spill.
    constexpr int UB = batch_of(U, FLOATS / (NSRC * V));
#pragma unroll
    for (int b = 0; b < U; b += UB) {
        float v[UB][NSRC][V];
#pragma unroll
        for (int u = 0; u < UB; ++u) {
            const int e = (int)threadIdx.x + (b + u) * NT;
            const int r = e / PER_ROW, col = (e % PER_ROW) * V;
#pragma unroll
            for (int s = 0; s < NSRC; ++s) {
                if (r < valid) {
                    ld_vec(src[s] + r * src_ld + col, v[u][s]);
                } else {
#pragma unroll
                    for (int i = 0; i < V; ++i) v[u][s][i] = 0.0f;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < UB; ++u) {
            const int e = (int)threadIdx.x + (b + u) * NT;
            put(e / PER_ROW, (e % PER_ROW) * V, v[u]);
        }
    }
}

constexpr int VEC = vec_len<elem_t>();

// The chunk's x and dy = d_out silu(z) rows (Q x P from `row0`, row stride
// `ld`): put(i, p, x[4], dy[4]) for every 4 columns (16-bit inputs arrive 8 at a
// time and are handed over as two quads).
template <typename Put>
SSD_DEV void stage_x_dy(const SsdBwdArgs& a, i64 row0, i64 ld, int len, Put put) {
#if SSD_HAS_Z
    const elem_t* const src[3] = {a.x + row0, a.dout + row0, a.z + row0};
    constexpr int NS = 3;
#else
    const elem_t* const src[2] = {a.x + row0, a.dout + row0};
    constexpr int NS = 2;
#endif
    stage_rows<Q, P, NS>(src, ld, len, [&](int i, int p, const Staged<NS, elem_t>& v) {
#pragma unroll
        for (int e = 0; e < VEC; e += 4) {
            float dy[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                dy[k] = v[1][e + k];
#if SSD_HAS_Z
                dy[k] *= silu(v[2][e + k]);
#endif
            }
            put(i, p + e, v[0] + e, dy);
        }
    });
}

#if SSD_BWD_TC
// Four consecutive values into NPL planes (plane stride `ps` u16) at p (8-byte aligned).
template <int NPL>
SSD_DEV void split_store4(u16* p, int ps, const float* v) {
    float r[4] = {v[0], v[1], v[2], v[3]};
#pragma unroll
    for (int k = 0; k < NPL; ++k) {
        uint2 w;
        w.x = pack2(r[0], r[1]);
        w.y = pack2(r[2], r[3]);
#ifdef SSD_EMULATE
        std::memcpy(p + k * ps, &w, sizeof w);
#else
        *reinterpret_cast<uint2*>(p + k * ps) = w;
#endif
        r[0] -= unpack_lo(w.x);
        r[1] -= unpack_hi(w.x);
        r[2] -= unpack_lo(w.y);
        r[3] -= unpack_hi(w.y);
    }
}

#endif

// The N-tile stage's element type: v3 stages f32 rows (stride LD), v4 bf16
// planes (stride PL64). put_quad writes four staged values in the stage's
// form: as they are, or as NPL planes `ps` apart.
SSD_DEV int stage_ld(const float*) { return LD; }
template <int NPL>
SSD_DEV void put_quad(float* p, int, const float* v) {
    st4(p, v);
}
#if SSD_BWD_TC
SSD_DEV int stage_ld(const u16*) { return PL64; }
template <int NPL>
SSD_DEV void put_quad(u16* p, int ps, const float* v) {
    split_store4<NPL>(p, ps, v);
}
#endif

// C and B of the chunk's rows, 64 columns from `off` (row stride `ld`), into ct
// and bt (as they are: exact in bf16).
template <typename Stage>
SSD_DEV void stage_cb_tile(const SsdBwdArgs& a, i64 off, i64 ld, int len, Stage* ct, Stage* bt) {
    const elem_t* const src[2] = {a.C + off, a.B + off};
    const int sld = stage_ld(ct);
    stage_rows<Q, 64, 2>(src, ld, len, [&](int i, int n, const Staged<2, elem_t>& v) {
#pragma unroll
        for (int e = 0; e < VEC; e += 4) {
            put_quad<1>(ct + i * sld + n + e, 0, v[0] + e);
            put_quad<1>(bt + i * sld + n + e, 0, v[1] + e);
        }
    });
}

// 64 columns of the entering state S and the leaving gradient G (P rows of
// stride N) into st and gt (v4: three planes each); with `gs`, also this
// thread's share of <G, S>. Staged while the S C / G B accumulators (32 PT
// registers) are live: the loads in flight get 64 / PT registers (at P 128 the
// full 64 took ptxas to 234 registers).
template <typename Stage>
SSD_DEV void stage_state_tile(const float* S, const float* Gr, Stage* st, Stage* gt, float* gs) {
    const float* const src[2] = {S, Gr};
    const int sld = stage_ld(st);
    auto put = [&](int p, int n, const Staged<2, float>& v) {
        put_quad<3>(st + p * sld + n, P * sld, v[0]);
        put_quad<3>(gt + p * sld + n, P * sld, v[1]);
        if (gs) {
#pragma unroll
            for (int e = 0; e < 4; ++e) *gs += v[1][e] * v[0][e];
        }
    };
    stage_rows<P, 64, 2, float, decltype(put), 64 / PT>(src, N, P, put);
}

SSD_DEV void tile_zero(float acc[4][4]) {
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
}

using ssd_bwd::chunk_decays;
using ssd_bwd::dy_at;

#if SSD_BWD_TC
// --- v4: the tile products on the tensor cores --------------------------------
//
// An operand lives in shared memory as bf16 planes: an exact bf16 input (x, B,
// C) as one, an f32 value as the parts of a split v = hi + mid + lo (each the
// bf16 rounding of what the previous parts left; three parts keep all 24 bits
// of an f32). mma_tile multiplies the planes with m16n8k16 MMAs, f32
// accumulate, keeping the products of parts (a, b) with a + b below the larger
// plane count: with three parts down to 2^-24 relative (the SIMT products'
// error), with two to 2^-16. Which products need which is in
// docs/kernels/mamba2-ssd-bwd.md ("v4").

// Where this thread's accumulator acc[t][e] of mma_tile sits in the 64 x 64
// tile: warp w holds rows 16 (w % 4) .. +15 and columns 32 (w / 4) .. +31, as
// four m16n8 tiles t; e is the MMA's fragment element (e and e + 1 are
// neighbouring columns, e >= 2 the lower eight rows).
SSD_DEV int mma_row(int e) {
    const int w = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    return 16 * (w % 4) + lane / 4 + (e >= 2 ? 8 : 0);
}
SSD_DEV int mma_col(int t, int e) {
    const int w = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    return 32 * (w / 4) + 8 * t + 2 * (lane % 4) + (e & 1);
}

// acc += this warp's part of sum_{k < K} A(m, k) B(k, n) over a 64 x 64 tile.
// A(m, k) is plane a of A at A[a ps_a + m lda + k] when A_KMAJOR, else
// A[a ps_a + k lda + m] (read with ldmatrix .trans); B(k, n) at B[b ps_b + n ldb
// + k] when B_KMAJOR, else B[b ps_b + k ldb + n]. K % 16 == 0; every row
// address 16-byte aligned. The MMAs run in a fixed order (deterministic).
template <bool A_KMAJOR, bool B_KMAJOR, int NA, int NB>
SSD_DEV void mma_tile(float acc[4][4], const u16* A, int lda, int ps_a, const u16* Bm, int ldb, int ps_b,
                      int K) {
    constexpr int TERMS = NA > NB ? NA : NB;
    const int w = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int m0 = 16 * (w % 4), n0 = 32 * (w / 4);
    const int mat = lane / 8, r8 = lane % 8;
    for (int k0 = 0; k0 < K; k0 += 16) {
        u32 a[NA][4];
#pragma unroll
        for (int pa = 0; pa < NA; ++pa) {
            const u16* pl = A + pa * ps_a;
            // Matrix `mat`: rows m0 + 8 (mat & 1), columns k0 + 8 (mat >> 1).
            if (A_KMAJOR)
                ldsm_x4(a[pa], pl + (m0 + 8 * (mat & 1) + r8) * lda + k0 + 8 * (mat >> 1));
            else
                ldsm_x4_trans(a[pa], pl + (k0 + 8 * (mat >> 1) + r8) * lda + m0 + 8 * (mat & 1));
        }
        u32 b[NB][4][2];
#pragma unroll
        for (int pb = 0; pb < NB; ++pb) {
            const u16* pl = Bm + pb * ps_b;
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                // Matrix `mat`: n8 tile 2 hh + (mat >> 1), k rows k0 + 8 (mat & 1).
                const int nb = n0 + 16 * hh + 8 * (mat >> 1), kb = k0 + 8 * (mat & 1);
                u32 r[4];
                if (B_KMAJOR)
                    ldsm_x4(r, pl + (nb + r8) * ldb + kb);
                else
                    ldsm_x4_trans(r, pl + (kb + r8) * ldb + nb);
                b[pb][2 * hh][0] = r[0];
                b[pb][2 * hh][1] = r[1];
                b[pb][2 * hh + 1][0] = r[2];
                b[pb][2 * hh + 1][1] = r[3];
            }
        }
#pragma unroll
        for (int pa = 0; pa < NA; ++pa)
#pragma unroll
            for (int pb = 0; pb < NB; ++pb) {
                if (pa + pb >= TERMS) continue;
#pragma unroll
                for (int t = 0; t < 4; ++t) mma16816(acc[t], a[pa], b[pb][t][0], b[pb][t][1]);
            }
    }
}

#endif  // SSD_BWD_TC

}  // namespace ssd_bwd3

#ifdef SSD_EMULATE
#define BWD3_SMEM float* const smem3 = reinterpret_cast<float*>(emu::shared_memory())
#else
#define BWD3_SMEM                                   \
    extern __shared__ __align__(16) float smem3_[]; \
    float* const smem3 = smem3_
#endif

// Stages A + C (v3; v4 with SSD_BWD_TC): per (chunk, head).
extern "C" __global__ void __launch_bounds__(256) ssd_bwd_chunk(const SsdBwdArgs a) {
    using namespace ssd_bwd3;
    BWD3_SMEM;
    float* const s_c = smem3;
    float* const dt_c = s_c + Q;
#if SSD_BWD_TC
    u16* const xwp = reinterpret_cast<u16*>(dt_c + Q);  // 3 planes (Q, PLP) of xw
    u16* const dyp = xwp + 3 * Q * PLP;                  // 3 planes (Q, PLP) of dye
    u16* const bp = dyp + 3 * Q * PLP;                   // (Q, PLN)
    u16* const cp = bp + Q * PLN;                        // (Q, PLN)
#else
    float* const xw = dt_c + Q;          // (Q, LDP): exp2(q - s_j) dt'_j x_j
    float* const dye = xw + Q * LDP;     // (Q, LDP): exp2(s_j) dy_j
    float* const bs = dye + Q * LDP;     // (Q, LDN)
    float* const cs = bs + Q * LDN;      // (Q, LDN)
#endif
    SSD_BWD_CHUNK_HEAD(a);

    chunk_decays(a, tok, len, h, s_c, dt_c, true);
    __syncthreads();
    const float q = s_c[len - 1];
    stage_x_dy(a, tok * HP + (i64)h * P, HP, len, [&](int j, int p, const float* xv, const float* dv) {
        const float xs = exp2f(q - s_c[j]) * dt_c[j], ds = exp2f(s_c[j]);
        float xr[4], dr[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            xr[e] = xs * xv[e];
            dr[e] = ds * dv[e];
        }
#if SSD_BWD_TC
        split_store4<3>(xwp + j * PLP + p, Q * PLP, xr);
        split_store4<3>(dyp + j * PLP + p, Q * PLP, dr);
#else
        st4(xw + j * LDP + p, xr);
        st4(dye + j * LDP + p, dr);
#endif
    });
    {
        const elem_t* const src[2] = {a.B + tok * GN + (i64)g * N, a.C + tok * GN + (i64)g * N};
        stage_rows<Q, N, 2>(src, GN, len, [&](int j, int n, const Staged<2, elem_t>& v) {
#pragma unroll
            for (int e = 0; e < VEC; e += 4) {
#if SSD_BWD_TC
                split_store4<1>(bp + j * PLN + n + e, 0, v[0] + e);
                split_store4<1>(cp + j * PLN + n + e, 0, v[1] + e);
#else
                st4(bs + j * LDN + n + e, v[0] + e);
                st4(cs + j * LDN + n + e, v[1] + e);
#endif
            }
        });
    }
    __syncthreads();
    float* R = a.ws_S + (c * H + h) * ssd_bwd::PN;
    float* Ct = a.ws_G + (c * H + h) * ssd_bwd::PN;
#if SSD_BWD_TC
    // R = xw^T B and C-term = dye^T C: three planes of the f32 side, one of the
    // exact bf16 side (2^-24, as v3's f32 products).
    for (int nt = 0; nt < NTL; ++nt) {
        float r[4][4], t[4][4];
        tile_zero(r);
        tile_zero(t);
        mma_tile<false, false, 3, 1>(r, xwp, PLP, Q * PLP, bp + nt * 64, PLN, 0, Q);
        mma_tile<false, false, 3, 1>(t, dyp, PLP, Q * PLP, cp + nt * 64, PLN, 0, Q);
#pragma unroll
        for (int tt = 0; tt < 4; ++tt)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const i64 at = (i64)mma_row(e) * N + nt * 64 + mma_col(tt, e);
                st2(R + at, r[tt][e], r[tt][e + 1]);
                st2(Ct + at, t[tt][e], t[tt][e + 1]);
            }
    }
#else
    for (int pt = 0; pt < PT; ++pt) {
        for (int nt = 0; nt < NTL; ++nt) {
            float r[4][4], t[4][4];
            tile_zero(r);
            tile_zero(t);
            // R(p, n) = sum_j xw(j, p) B(j, n); C-term(p, n) = sum_j dye(j, p) C(j, n).
            tile_mm<false, false, false>(r, xw + pt * 64, LDP, bs + nt * 64, LDN, Q, nullptr);
            tile_mm<false, false, false>(t, dye + pt * 64, LDP, cs + nt * 64, LDN, Q, nullptr);
            for (int i = 0; i < 4; ++i) {
                const i64 row = (i64)(pt * 64 + tile_row(i)) * N + nt * 64 + tile_col<false>(0);
                st4(R + row, r[i][0], r[i][1], r[i][2], r[i][3]);
                st4(Ct + row, t[i][0], t[i][1], t[i][2], t[i][3]);
            }
        }
    }
#endif
}

// Stage E (v3; v4 with SSD_BWD_TC): per (chunk, head). The block is alone on its
// SM (its shared memory), so the launch bounds say so: without the minimum of
// one block ptxas held v4 to 128 registers and spilled (187 with it, no spills).
extern "C" __global__ void __launch_bounds__(256, 1) ssd_bwd_grad(const SsdBwdArgs a) {
    using namespace ssd_bwd3;
    BWD3_SMEM;
    float* const s_c = smem3;
    float* const dt_c = s_c + Q;
    float* const w_c = dt_c + Q;    // exp2(q - s_j) dt'_j
    float* const ex_c = w_c + Q;    // exp2(s_i)
    float* const e_c = ex_c + Q;    // exp2(s_i) dy_i . (S C_i)
    float* const f_c = e_c + Q;     // exp2(q - s_j) x_j . (G B_j)
    float* const ddt_c = f_c + Q;   // direct d dt', then the raw-dt gradient
    float* const da_c = ddt_c + Q;  // log-decay gradients
    float* const red = da_c + Q;    // (NT)
    float* const dys = red + NT;    // (Q, LDP)
    float* const xs = dys + Q * LDP;  // (Q, LDP)
    float* const mx = xs + Q * LDP;   // (Q, LD): C_i . B_j exp2(s_i - s_j), j <= i < len
    float* const gx = mx + Q * LD;    // (Q, LD): dy_i . x_j, later W_ij = exp2(s_i - s_j) dt'_j gx_ij
#if SSD_BWD_TC
    u16* const dyp = reinterpret_cast<u16*>(gx + Q * LD);  // 3 planes (Q, PLP) of dy
    u16* const xp = dyp + 3 * Q * PLP;                      // (Q, PLP): x
    u16* const wp = xp + Q * PLP;                           // 2 planes (Q, PLQ) of W
    float* const region = reinterpret_cast<float*>(wp + 2 * Q * PLQ);
    // The N-tile stage as planes ...
    u16* const ct = reinterpret_cast<u16*>(region);  // (Q, PL64): C(i, n0 + n)
    u16* const bt = ct + Q * PL64;                   // (Q, PL64): B(j, n0 + n)
    u16* const st = bt + Q * PL64;                   // 3 planes (P, PL64): S(p, n0 + n)
    u16* const gt = st + 3 * P * PL64;               // 3 planes (P, PL64): G(p, n0 + n)
#else
    float* const region = gx + Q * LD;
    // The N-tile stage ...
    float* const ct = region;         // (Q, LD): C(i, n0 + n)
    float* const bt = ct + Q * LD;    // (Q, LD): B(j, n0 + n)
    float* const st = bt + Q * LD;    // (P, LD): S(p, n0 + n)
    float* const gt = st + P * LD;    // (P, LD): G(p, n0 + n)
#endif
    // ... and, between the two N-tile loops, the results.
    float* const scs = region;          // (Q, LDP): S C_i
    float* const gbs = scs + Q * LDP;   // (Q, LDP): G B_j
    float* const rp = gbs + Q * LDP;    // (Q, LD): row prefix sums of the pair terms

    const int tid = threadIdx.x;
    SSD_BWD_CHUNK_HEAD(a);
    const i64 hp0 = (i64)h * P;
    const float* S = a.ws_S + (c * H + h) * ssd_bwd::PN;
    const float* Gr = a.ws_G + (c * H + h) * ssd_bwd::PN;
    const float* cb = a.ws_cb + (c * G + g) * Q * Q;

    // 1. Per-token vectors; dy and x; C B^T o E (masked to j <= i < len).
    for (int i = tid; i < Q; i += NT) {
        s_c[i] = i < len ? a.ws_cum[(tok + i) * H + h] : 0.0f;
        dt_c[i] = i < len ? a.ws_dt[(tok + i) * H + h] : 0.0f;
    }
    stage_x_dy(a, tok * HP + hp0, HP, len, [&](int i, int p, const float* xv, const float* dv) {
        st4(xs + i * LDP + p, xv);
        st4(dys + i * LDP + p, dv);
#if SSD_BWD_TC
        split_store4<1>(xp + i * PLP + p, 0, xv);
        split_store4<3>(dyp + i * PLP + p, Q * PLP, dv);
#endif
    });
    __syncthreads();
    const float q = s_c[len - 1];
    for (int i = tid; i < Q; i += NT) {
        w_c[i] = i < len ? exp2f(q - s_c[i]) * dt_c[i] : 0.0f;
        ex_c[i] = i < len ? exp2f(s_c[i]) : 0.0f;
    }
    {
        // Rows i < len of C B^T (the entries j > i are never written by
        // ssd_bwd_cb: loaded with their row's vector, masked here).
        const float* const src[1] = {cb};
        stage_rows<Q, Q, 1>(src, Q, len, [&](int i, int j0, const Staged<1, float>& v) {
            float m[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = j0 + e;
                m[e] = (j <= i && i < len) ? v[0][e] * exp2f(s_c[i] - s_c[j]) : 0.0f;
            }
            st4(mx + i * LD + j0, m);
        });
    }

    // 2. gx = dy x^T.
    {
        float acc[4][4];
        tile_zero(acc);
#if SSD_BWD_TC
        // dy's three planes against the exact x (2^-24: gx feeds d dt' and da).
        mma_tile<true, true, 3, 1>(acc, dyp, PLP, Q * PLP, xp, PLP, 0, P);
#pragma unroll
        for (int t = 0; t < 4; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) gx[mma_row(e) * LD + mma_col(t, e)] = acc[t][e];
#else
        tile_mm<true, true, false>(acc, dys, LDP, xs, LDP, P, nullptr);
        for (int r = 0; r < 4; ++r)
            for (int cc = 0; cc < 4; ++cc) gx[tile_row(r) * LD + tile_col<true>(cc)] = acc[r][cc];
#endif
    }

    // 3. S C and G B over the N tiles, with the carried term's <G, S>.
    // Kept in registers: every loop over pt is unrolled (an indexed array would
    // go to the stack).
    float sc[PT][4][4], gb[PT][4][4];
#pragma unroll
    for (int pt = 0; pt < PT; ++pt) {
        tile_zero(sc[pt]);
        tile_zero(gb[pt]);
    }
    float gs_part = 0.0f;
    for (int nt = 0; nt < NTL; ++nt) {
        const int n0 = nt * 64;
        // v4 stages planes, v3 f32 rows (by the stage's element type).
        stage_cb_tile(a, tok * GN + (i64)g * N + n0, GN, len, ct, bt);
        stage_state_tile(S + n0, Gr + n0, st, gt, &gs_part);
        __syncthreads();
#if SSD_BWD_TC
        // SC(i, p) = sum_n C(i, n) S(p, n); GB(j, p) = sum_n B(j, n) G(p, n): the
        // states' three planes against the exact B, C (2^-24).
        mma_tile<true, true, 1, 3>(sc[0], ct, PL64, 0, st, PL64, P * PL64, 64);
        mma_tile<true, true, 1, 3>(gb[0], bt, PL64, 0, gt, PL64, P * PL64, 64);
#else
#pragma unroll
        for (int pt = 0; pt < PT; ++pt) {
            // SC(i, p) = sum_n C(i, n) S(p, n); GB(j, p) = sum_n B(j, n) G(p, n).
            tile_mm<true, true, false>(sc[pt], ct, LD, st + pt * 64 * LD, LD, 64, nullptr);
            tile_mm<true, true, false>(gb[pt], bt, LD, gt + pt * 64 * LD, LD, 64, nullptr);
        }
#endif
        __syncthreads();
    }
    const float carried = exp2f(q) * ssd_bwd::block_sum(gs_part, red);
#if SSD_BWD_TC
#pragma unroll
    for (int t = 0; t < 4; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int idx = mma_row(e) * LDP + mma_col(t, e);
            scs[idx] = sc[0][t][e];
            gbs[idx] = gb[0][t][e];
        }
#else
#pragma unroll
    for (int pt = 0; pt < PT; ++pt)
        for (int r = 0; r < 4; ++r)
            for (int cc = 0; cc < 4; ++cc) {
                const int idx = tile_row(r) * LDP + pt * 64 + tile_col<true>(cc);
                scs[idx] = sc[pt][r][cc];
                gbs[idx] = gb[pt][r][cc];
            }
#endif
    __syncthreads();

    // 4. e_i and f_j: four lanes per row, a fixed shuffle tree.
    {
        const int row = tid / 4, part = tid % 4;
        float ei = 0.0f, fi = 0.0f;
        for (int p = part; p < P; p += 4) {
            ei += dys[row * LDP + p] * scs[row * LDP + p];
            fi += xs[row * LDP + p] * gbs[row * LDP + p];
        }
        ei += __shfl_xor_sync(0xffffffffu, ei, 1);
        fi += __shfl_xor_sync(0xffffffffu, fi, 1);
        ei += __shfl_xor_sync(0xffffffffu, ei, 2);
        fi += __shfl_xor_sync(0xffffffffu, fi, 2);
        if (part == 0) {
            e_c[row] = row < len ? ex_c[row] * ei : 0.0f;
            f_c[row] = row < len ? exp2f(q - s_c[row]) * fi : 0.0f;
        }
    }
    // Row prefix sums of the pair terms, rp(i, k) = sum_{j < k} mx_ij dt'_j gx_ij.
    for (int i = tid; i < Q; i += NT) {
        float run = 0.0f;
        for (int k = 0; k < Q; ++k) {
            rp[i * LD + k] = run;
            run += mx[i * LD + k] * dt_c[k] * gx[i * LD + k];
        }
    }
    __syncthreads();

    // 5. Direct d dt'_k and the log-decay gradients da_k (docs/BACKWARD-SSD.md §5:
    //    each summed from its own terms).
    for (int k = tid; k < Q; k += NT) {
        float direct = f_c[k], pair = 0.0f, suffix = 0.0f, prefix = 0.0f;
        for (int i = k; i < Q; ++i) {
            direct += mx[i * LD + k] * gx[i * LD + k];
            pair += rp[i * LD + k];
            suffix += e_c[i];
        }
        for (int j = 0; j < k; ++j) prefix += dt_c[j] * f_c[j];
        ddt_c[k] = k < len ? direct : 0.0f;
        da_c[k] = k < len ? pair + suffix + carried + prefix : 0.0f;
    }
    __syncthreads();
    // W_ij = exp2(s_i - s_j) dt'_j gx_ij, j <= i < len (in place of gx; v4 also
    // splits it into two planes: W feeds only the bf16-stored dB and dC, for
    // which 2^-16 is far inside the storage rounding).
    for (int e = tid; e < Q * Q / 4; e += NT) {
        const int i = e / (Q / 4), j0 = 4 * (e % (Q / 4));
        float wv[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int j = j0 + u;
            wv[u] = (j <= i && i < len) ? exp2f(s_c[i] - s_c[j]) * dt_c[j] * gx[i * LD + j] : 0.0f;
        }
        st4(gx + i * LD + j0, wv);
#if SSD_BWD_TC
        split_store4<2>(wp + i * PLQ + j0, Q * PLQ, wv);
#endif
    }

    // 6. dx and dz.
    for (int pt = 0; pt < PT; ++pt) {
        float dxa[4][4], ya[4][4];
        tile_zero(dxa);
        tile_zero(ya);
        // sum_i mx(i, j) dy(i, p); sum_k mx(j, k) dt'_k x(k, p).
        tile_mm<false, false, false>(dxa, mx, LD, dys + pt * 64, LDP, Q, nullptr);
#if SSD_HAS_Z
        tile_mm<true, false, true>(ya, mx, LD, xs + pt * 64, LDP, Q, dt_c);
#endif
        for (int r = 0; r < 4; ++r) {
            const int j = tile_row(r);
            if (j >= len) continue;
            for (int cc = 0; cc < 4; ++cc) {
                const int p = pt * 64 + tile_col<false>(cc);
                const i64 off = (tok + j) * HP + hp0 + p;
                const float dsk = ssd_bwd::d_skip(a, h, p);
                const float dxv = dsk * dys[j * LDP + p] + w_c[j] * gbs[j * LDP + p] + dt_c[j] * dxa[r][cc];
                store_elem(a.dx + off, dxv);
#if SSD_HAS_Z
                const float y = ex_c[j] * scs[j * LDP + p] + ya[r][cc] + dsk * xs[j * LDP + p];
                store_elem(a.dz + off, ssd_bwd::ld(a.dout, off) * y * ssd_bwd::silu_grad(ssd_bwd::ld(a.z, off)));
#endif
            }
        }
    }
    __syncthreads();  // the results region becomes the stage again

    // 7. Per-head dC and dB over the N tiles.
    for (int nt = 0; nt < NTL; ++nt) {
        const int n0 = nt * 64;
        stage_cb_tile(a, tok * GN + (i64)g * N + n0, GN, len, ct, bt);
        stage_state_tile(S + n0, Gr + n0, st, gt, nullptr);
        __syncthreads();
        float dc[4][4], db[4][4];
        tile_zero(dc);
        tile_zero(db);
#if SSD_BWD_TC
        // Two planes of each f32 operand (dB and dC are stored as bf16).
        // exp2(s_i) sum_p dy(i, p) S(p, n); w_j sum_p x(j, p) G(p, n).
        mma_tile<true, false, 2, 2>(dc, dyp, PLP, Q * PLP, st, PL64, P * PL64, P);
        mma_tile<true, false, 1, 2>(db, xp, PLP, 0, gt, PL64, P * PL64, P);
#pragma unroll
        for (int t = 0; t < 4; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                dc[t][e] *= ex_c[mma_row(e)];
                db[t][e] *= w_c[mma_row(e)];
            }
        // + sum_j W(i, j) B(j, n); + sum_i W(i, j) C(i, n).
        mma_tile<true, false, 2, 1>(dc, wp, PLQ, Q * PLQ, bt, PL64, 0, Q);
        mma_tile<false, false, 2, 1>(db, wp, PLQ, Q * PLQ, ct, PL64, 0, Q);
#pragma unroll
        for (int t = 0; t < 4; ++t)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = mma_row(e);
                if (i >= len) continue;
                const i64 at = ((tok + i) * H + h) * N + n0 + mma_col(t, e);
                st2(a.ws_dch + at, dc[t][e], dc[t][e + 1]);
                st2(a.ws_dbh + at, db[t][e], db[t][e + 1]);
            }
#else
        // exp2(s_i) sum_p dy(i, p) S(p, n); w_j sum_p x(j, p) G(p, n).
        tile_mm<true, false, false>(dc, dys, LDP, st, LD, P, nullptr);
        tile_mm<true, false, false>(db, xs, LDP, gt, LD, P, nullptr);
        for (int r = 0; r < 4; ++r)
            for (int cc = 0; cc < 4; ++cc) {
                dc[r][cc] *= ex_c[tile_row(r)];
                db[r][cc] *= w_c[tile_row(r)];
            }
        // + sum_j W(i, j) B(j, n); + sum_i W(i, j) C(i, n).
        tile_mm<true, false, false>(dc, gx, LD, bt, LD, Q, nullptr);
        tile_mm<false, false, false>(db, gx, LD, ct, LD, Q, nullptr);
        for (int r = 0; r < 4; ++r) {
            const int i = tile_row(r);
            if (i >= len) continue;
            const i64 row = ((tok + i) * H + h) * N + n0 + tile_col<false>(0);
            st4(a.ws_dch + row, dc[r][0], dc[r][1], dc[r][2], dc[r][3]);
            st4(a.ws_dbh + row, db[r][0], db[r][1], db[r][2], db[r][3]);
        }
#endif
        __syncthreads();
    }

    // 8. The dt chain (per token), then the partials in a fixed order (as v1).
    float* part_out = ssd_bwd::dt_chain_and_partials(a, c, h, tok, len, dt_c, ddt_c, da_c);
    for (int p = tid; p < P; p += NT) {
        float acc = 0.0f;
#if SSD_D_MODE != 0
        for (int i = 0; i < len; ++i) acc += dys[i * LDP + p] * xs[i * LDP + p];
#endif
        part_out[2 * H + h * P + p] = acc;
    }
}
