// Mamba-2 SSD chunked backward, f32 arithmetic throughout: on CUDA cores (v1,
// v3), or with the heavy products on the tensor cores over bf16 planes that
// keep the f32 operands' bits where the gradients need them (v4,
// ssd_bwd_tiled.cuh). Derivation: docs/BACKWARD-SSD.md; kernel notes:
// docs/kernels/mamba2-ssd-bwd.md.
//
// The GPU twin of crates/mamba2-ssd/src/backward_cpu.rs, stage for stage, as six
// launches in stream order (host: crates/mamba2-ssd/src/cuda/backward.rs):
//
//   ssd_bwd_chunk        (chunk, head)   dt', s (log2 cumsum), dy = d_out silu(z),
//                                        the chunk's own state R_c and its own share
//                                        of the entering-state gradient, C-term_c
//   ssd_bwd_cb           (chunk, group)  C_i . B_j for j <= i
//   ssd_bwd_pass         (seq, head, slice of P x N)  forward state passing
//                                        (entering states S_c) and reverse state
//                                        passing (G_c, d initial)
//   ssd_bwd_grad         (chunk, head)   dx, dz, ddt, per-head dB/dC, log-decay
//                                        gradients, per-chunk partials of dA, dt_bias, D
//   ssd_bwd_reduce_bc    (token, group, n)  dB, dC: heads of the group summed in order
//   ssd_bwd_reduce_params (head)         dA, d dt_bias, dD: chunks summed in order
//
// Deterministic by construction: no atomics; every output element and every
// workspace element is written by one thread, and every sum runs over a fixed
// index order (tokens of a chunk, heads of a group, chunks, block-tree
// reductions of fixed shape). Two runs give the same bits.
//
// Correctness first: the kernel keeps its intermediates in global workspaces
// (the plan reports their bytes) and reads its operands through L1/L2; the
// tensor-core version is future work (docs/kernels/mamba2-ssd-bwd.md).
//
// Compile-time defines: SSD_DTYPE 0|1|2, SSD_Q (64, 128, 256), SSD_N, SSD_P,
// SSD_DT_BIAS, SSD_DT_SOFTPLUS, SSD_D_MODE (0 none, 1 (H), 2 (H, P)), SSD_HAS_Z,
// SSD_HAS_S0, SSD_HAS_DFINAL; SSD_BWD_MMA (0 or 1, below).
#include "ssd_common.cuh"

namespace ssd_bwd {
constexpr int Q = SSD_Q;
constexpr int N = SSD_N;
constexpr int P = SSD_P;
constexpr int NT = 256;
static_assert(Q % 32 == 0 && Q <= NT, "chunk must be a multiple of 32 and at most 256");
constexpr i64 PN = (i64)P * N;
}  // namespace ssd_bwd

// SSD_BWD_MMA 1: S C and G B of ssd_bwd_grad on the tensor cores (bf16 inputs,
// N a multiple of 16, P of 8; the host checks); 0: the SIMT loop (v1).
#ifndef SSD_BWD_MMA
#define SSD_BWD_MMA 0
#endif
// SSD_BWD_TILED 1: stages A + C and E as shared-memory tiled kernels
// (ssd_bwd_tiled.cuh, v3; Q 64, P 64 or 128, N a multiple of 64 up to 256;
// the host checks); 0: v1's per-element loops.
#ifndef SSD_BWD_TILED
#define SSD_BWD_TILED 0
#endif
#if SSD_BWD_TILED && SSD_BWD_MMA
#error "SSD_BWD_TILED and SSD_BWD_MMA are exclusive"
#endif
// SSD_BWD_TC 1 (with SSD_BWD_TILED): v4, the tiled kernels' products on the
// tensor cores over bf16 planes of their operands (ssd_bwd_tiled.cuh; bf16
// inputs, P = 64; the host checks); 0: v3's SIMT tile products.
#ifndef SSD_BWD_TC
#define SSD_BWD_TC 0
#endif
#if SSD_BWD_TC && !SSD_BWD_TILED
#error "SSD_BWD_TC refines the tiled kernels (SSD_BWD_TILED=1)"
#endif
#if SSD_BWD_MMA
static_assert(SSD_DTYPE == 2, "the tensor-core path takes bf16 inputs (f16 parts of an f32 would underflow)");
static_assert(SSD_N % 16 == 0 && SSD_P % 8 == 0, "the tensor-core path needs N % 16 == 0, P % 8 == 0");
#endif

// Arguments of every backward kernel, by value; mirrored field for field by
// `SsdBwdArgs` in crates/mamba2-ssd/src/cuda/backward.rs (both assert the size).
struct SsdBwdArgs {
    const elem_t* x;        // (T, H, P)
    const elem_t* dt;       // (T, H)
    const float* A;         // (H)
    const elem_t* B;        // (T, G, N)
    const elem_t* C;        // (T, G, N)
    const float* dt_bias;   // (H) or null
    const float* D;         // (H) or (H, P) or null
    const elem_t* z;        // (T, H, P) or null
    const float* s0;        // (seqs, H, P, N) or null
    const elem_t* dout;     // (T, H, P)
    const float* dfinal;    // (seqs, H, P, N) or null
    elem_t* dx;             // (T, H, P)
    elem_t* ddt;            // (T, H)
    elem_t* dB;             // (T, G, N)
    elem_t* dC;             // (T, G, N)
    elem_t* dz;             // (T, H, P) or null
    float* dA;              // (H)
    float* ddt_bias;        // (H) or null
    float* dD;              // (H) or (H, P) or null
    float* dinit;           // (seqs, H, P, N) or null
    float* ws_dt;           // (T, H) dt'
    float* ws_cum;          // (T, H) in-chunk cumulative log2 decay s
    float* ws_dy;           // (T, H, P) d_out silu(z)
    float* ws_S;            // (chunks, H, P, N): R_c, then the entering state S_c
    float* ws_G;            // (chunks, H, P, N): C-term_c, then G_c (leaving grad)
    float* ws_cb;           // (chunks, G, Q, Q) C_i . B_j
    float* ws_gx;           // (chunks, H, Q, Q) dy_i . x_j
    float* ws_sc;           // (T, H, P) S C_i
    float* ws_gb;           // (T, H, P) G B_j
    float* ws_dbh;          // (T, H, N) per-head dB
    float* ws_dch;          // (T, H, N) per-head dC
    float* ws_part;         // (chunks, H (2 + P)) partial dA, d dt_bias, dD
    const i64* chunks;      // (chunks, 2): first token, length
    const i64* seqs;        // (seqs, 2): first chunk, number of chunks
    i64 nchunks;
    i64 ntok;
    int H;
    int G;
    int nseqs;
    int pad_;
    float dt_min;
    float dt_max;
};
static_assert(sizeof(SsdBwdArgs) == 312, "SsdBwdArgs layout changed: update cuda/backward.rs");

namespace ssd_bwd {

SSD_DEV float ld(const elem_t* p, i64 i) { return elem_to_f32(p[i]); }

#if SSD_BWD_MMA
// Two consecutive 16-bit inputs at an even index, as one mma.sync operand register.
SSD_DEV u32 ld_pair(const elem_t* p, i64 i) {
#ifdef SSD_EMULATE
    u32 v;
    std::memcpy(&v, p + i, sizeof v);
    return v;
#else
    return *reinterpret_cast<const u32*>(p + i);
#endif
}

// f32 (a, b) -> three 16-bit pairs with a = hi + mid + lo to about 2^-24 relative
// (bf16 keeps 8 bits each: all of an f32's 24). Two parts (2^-16) were measured
// to move dA and d dt_bias by 1e-5 relative, the size of their budget.
SSD_DEV void split_pair(float a, float b, u32 part[3]) {
    part[0] = pack2(a, b);
    const float ra = a - unpack_lo(part[0]), rb = b - unpack_hi(part[0]);
    part[1] = pack2(ra, rb);
    part[2] = pack2(ra - unpack_lo(part[1]), rb - unpack_hi(part[1]));
}
#endif

// d silu(z) / dz, the form of ssm_core::mamba2_grad::silu_grad_f32.
SSD_DEV float silu_grad(float z) {
    const float s = 1.0f / (1.0f + expf(-z));
    return s * (1.0f + z * (1.0f - s));
}

// d dt' / d raw dt (ssm_core::mamba2_grad::dt_grad_factor_f32): zero where the
// clamp is active, sigmoid(v) through softplus below its threshold.
SSD_DEV float dt_grad_factor(float raw, float bias, float lo, float hi) {
    const float v = raw + bias;
#if SSD_DT_SOFTPLUS
    const float u = ssm_softplus(v);
#else
    const float u = v;
#endif
    if (u < lo || u > hi) return 0.0f;
#if SSD_DT_SOFTPLUS
    if (v <= 20.0f) return 1.0f / (1.0f + expf(-v));
#endif
    return 1.0f;
}

// dt' and the in-chunk cumulative log2 decay s of one chunk (warp 0),
// into s_c, dt_c (zero past the chunk), and to the workspaces when `publish`.
SSD_DEV void chunk_decays(const SsdBwdArgs& a, i64 tok, int len, int h, float* s_c, float* dt_c,
                          bool publish) {
    const int tid = threadIdx.x;
    const int H = a.H;
    if (tid >= 32) return;
    const float A2 = a.A[h] * SSD_LOG2E;
    const float bias = SSD_DT_BIAS ? a.dt_bias[h] : 0.0f;
    constexpr int V = Q / 32;
    float dtp[V], pre[V], run;
    const float incl = ssd_warp_cumsum<V>(
        tid, len, A2,
        [&](int j, int) { return ssd_dt(ld(a.dt, (tok + j) * H + h), bias, a.dt_min, a.dt_max); },
        dtp, pre, run);
#pragma unroll
    for (int v = 0; v < V; ++v) {
        const int j = tid * V + v;
        const float s = incl - run + pre[v];
        s_c[j] = s;
        dt_c[j] = dtp[v];
        if (publish && j < len) {
            a.ws_dt[(tok + j) * H + h] = dtp[v];
            a.ws_cum[(tok + j) * H + h] = s;
        }
    }
}

// d_out silu(z) at `off` (the gradient that reaches y).
SSD_DEV float dy_at(const SsdBwdArgs& a, i64 off) {
    float v = ld(a.dout, off);
#if SSD_HAS_Z
    v *= silu(ld(a.z, off));
#endif
    return v;
}

// The skip weight D of (head h, column p) that dx gets d_out silu(z) through
// (per head, per head and column, or none): one definition for both
// ssd_bwd_grad versions.
SSD_DEV float d_skip(const SsdBwdArgs& a, int h, int p) {
#if SSD_D_MODE == 1
    (void)p;
    return a.D[h];
#elif SSD_D_MODE == 2
    return a.D[h * P + p];
#else
    (void)a, (void)h, (void)p;
    return 0.0f;
#endif
}

// The end of stage E shared by both ssd_bwd_grad versions: the dt chain per
// token (the raw-dt gradient from the direct d dt' in ddt_c and the log-decay
// gradient in da_c, stored to ddt and kept in ddt_c), then the chunk's dA and
// d dt_bias partials (thread 0, tokens in reverse order). Block-wide: every
// thread calls it. Returns the chunk's row of partials (its D slots follow).
SSD_DEV float* dt_chain_and_partials(const SsdBwdArgs& a, i64 c, int h, i64 tok, int len,
                                     const float* dt_c, float* ddt_c, const float* da_c) {
    const int H = a.H;
    const float A = a.A[h];
    const float bias = SSD_DT_BIAS ? a.dt_bias[h] : 0.0f;
    for (int k = threadIdx.x; k < len; k += NT) {
        const float d_prime = ddt_c[k] + A * da_c[k];
        const float raw = ld(a.dt, (tok + k) * H + h);
        const float d_raw = d_prime * dt_grad_factor(raw, bias, a.dt_min, a.dt_max);
        store_elem(a.ddt + (tok + k) * H + h, d_raw);
        ddt_c[k] = d_raw;
    }
    __syncthreads();
    float* part_out = a.ws_part + c * (i64)H * (2 + P);
    if (threadIdx.x == 0) {
        float da_h = 0.0f, db_h = 0.0f;
        for (int k = len - 1; k >= 0; --k) {
            da_h += dt_c[k] * da_c[k];
            db_h += ddt_c[k];
        }
        part_out[h] = da_h;
        part_out[H + h] = db_h;
    }
    return part_out;
}

// Block-wide sum of one value per thread in a fixed tree order (deterministic).
SSD_DEV float block_sum(float v, float* red) {
    const int tid = threadIdx.x;
    red[tid] = v;
    __syncthreads();
    for (int s = NT / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    const float r = red[0];
    __syncthreads();
    return r;
}

}  // namespace ssd_bwd

// Static shared arrays on the device; under the CPU emulation (ssd_emu.cuh, one
// fiber per thread) they must live in the block's emulated shared memory, so
// each array is carved from it at a fixed float offset.
#ifdef SSD_EMULATE
#define BWD_SMEM_BASE float* const bwd_smem = reinterpret_cast<float*>(emu::shared_memory())
#define BWD_SHARED(name, count, off) float* const name = bwd_smem + (off)
#else
#define BWD_SMEM_BASE
#define BWD_SHARED(name, count, off) __shared__ float name[count]
#endif

// What a (chunk, head) block of stages A + C and E works on, for every version
// of those kernels (v1 here, v3/v4 in ssd_bwd_tiled.cuh): chunk c, head h and
// its B/C group g, the chunk's first token and length, and the token strides of
// the (T, H, P) and (T, G, N) tensors. A macro, as SSD_UNPACK_ARGS, so that the
// versions decode the grid one way and declare the same locals.
#define SSD_BWD_CHUNK_HEAD(a)                      \
    const int H = (a).H, G = (a).G;                \
    const i64 c = blockIdx.x / H;                  \
    const int h = blockIdx.x % H;                  \
    const int g = h / (H / G);                     \
    const i64 tok = (a).chunks[2 * c];             \
    const int len = (int)(a).chunks[2 * c + 1];    \
    const i64 HP = (i64)H * P, GN = (i64)G * N

#if !SSD_BWD_TILED
// Stage A + C: per (chunk, head).
extern "C" __global__ void __launch_bounds__(256) ssd_bwd_chunk(const SsdBwdArgs a) {
    using namespace ssd_bwd;
    BWD_SMEM_BASE;
    BWD_SHARED(s_c, Q, 0);
    BWD_SHARED(dt_c, Q, Q);
    const int tid = threadIdx.x;
    SSD_BWD_CHUNK_HEAD(a);

    chunk_decays(a, tok, len, h, s_c, dt_c, true);
    // dy = d_out silu(z), once per (token, head, p).
    for (int e = tid; e < len * P; e += NT) {
        const int i = e / P, p = e % P;
        const i64 off = (tok + i) * HP + (i64)h * P + p;
        a.ws_dy[off] = dy_at(a, off);
    }
    __syncthreads();
    const float q = s_c[len - 1];
    float* R = a.ws_S + (c * H + h) * PN;
    float* Ct = a.ws_G + (c * H + h) * PN;
    for (i64 e = tid; e < PN; e += NT) {
        const int p = (int)(e / N), n = (int)(e % N);
        float r = 0.0f, t = 0.0f;
        for (int j = 0; j < len; ++j) {
            const i64 row = (tok + j) * HP + (i64)h * P + p;
            const i64 bc = (tok + j) * GN + (i64)g * N + n;
            r += exp2f(q - s_c[j]) * dt_c[j] * ld(a.x, row) * ld(a.B, bc);
            t += exp2f(s_c[j]) * a.ws_dy[row] * ld(a.C, bc);
        }
        R[e] = r;
        Ct[e] = t;
    }
}

#endif  // !SSD_BWD_TILED

// C_i . B_j for j <= i: per (chunk, group).
extern "C" __global__ void __launch_bounds__(256) ssd_bwd_cb(const SsdBwdArgs a) {
    using namespace ssd_bwd;
    const int G = a.G;
    const i64 c = blockIdx.x / G;
    const int g = blockIdx.x % G;
    const i64 tok = a.chunks[2 * c];
    const int len = (int)a.chunks[2 * c + 1];
    const i64 GN = (i64)G * N;
    float* cb = a.ws_cb + (c * G + g) * Q * Q;
    for (int e = threadIdx.x; e < len * len; e += NT) {
        const int i = e / len, j = e % len;
        if (j > i) continue;
        float acc = 0.0f;
        for (int n = 0; n < N; ++n)
            acc += ld(a.C, (tok + i) * GN + (i64)g * N + n) * ld(a.B, (tok + j) * GN + (i64)g * N + n);
        cb[i * Q + j] = acc;
    }
}

// Stages B and D: per (sequence, head, slice of the P x N state elements).
// The recurrence is elementwise, so slices are independent: the host picks how
// many (`gridDim.x` = sequences x H x slices) to fill the device. The chunk
// decays of the sequence are staged in shared memory a window at a time, and
// every thread issues the loads of PASS_D chunks before their dependent
// multiply-adds, each a 16-byte vector of PASS_E neighbouring elements: v1 ran
// one block per (sequence, head) with one load chain per element (20 ms at
// M2-2.7B, 130 GB/s); v3.1's four scalar chunks in flight reached 37% of DRAM
// peak at 63 registers.
namespace ssd_bwd {
constexpr int PASS_E = 4;   // neighbouring state elements per thread per round
constexpr int PASS_D = 6;   // chunks whose loads are in flight together (8: spills at 3 blocks per SM)
// Whole vectors when a state's element count allows (the element indices of a
// thread are e0 .. e0 + 3, e0 a multiple of 4, and slices hold whole vectors);
// pass_load / pass_store select the form by the same test on SSD_P SSD_N.
constexpr bool PASS_VEC = PN % PASS_E == 0;
// Chunks per staged window of decays; the emulation check narrows it so that its
// few-chunk sequences cross windows.
#ifndef SSD_BWD_PASS_WINDOW
#define SSD_BWD_PASS_WINDOW NT
#endif
constexpr int PASS_W = SSD_BWD_PASS_WINDOW;
static_assert(PASS_W >= 1 && PASS_W <= NT, "a window's decays are staged one per thread");

// The PASS_E elements at p (elements e0 + k < hi, k < PASS_E; zeros elsewhere).
// With whole vectors (PASS_VEC), `valid` is 0 or PASS_E.
SSD_DEV void pass_load(const float* p, int valid, float v[PASS_E]) {
#if (SSD_P * SSD_N) % 4 == 0
    static_assert(PASS_VEC, "the vector form needs P N % 4 == 0");
    float4 r = {0.0f, 0.0f, 0.0f, 0.0f};
    if (valid > 0) {
#ifdef SSD_EMULATE
        std::memcpy(&r, p, sizeof r);
#else
        r = *reinterpret_cast<const float4*>(p);
#endif
    }
    v[0] = r.x;
    v[1] = r.y;
    v[2] = r.z;
    v[3] = r.w;
#else
#pragma unroll
    for (int k = 0; k < PASS_E; ++k) v[k] = k < valid ? p[k] : 0.0f;
#endif
}
SSD_DEV void pass_store(float* p, int valid, const float v[PASS_E]) {
#if (SSD_P * SSD_N) % 4 == 0
    if (valid == 0) return;
    float4 r;
    r.x = v[0];
    r.y = v[1];
    r.z = v[2];
    r.w = v[3];
#ifdef SSD_EMULATE
    std::memcpy(p, &r, sizeof r);
#else
    *reinterpret_cast<float4*>(p) = r;
#endif
#else
#pragma unroll
    for (int k = 0; k < PASS_E; ++k)
        if (k < valid) p[k] = v[k];
#endif
}
}  // namespace ssd_bwd

// One window of `wn` chunks of one pass: `slot` is the window's first chunk at
// this thread's first element, `stride` the distance between chunks, `valid`
// how many of its PASS_E elements exist. Each slot's value is read, replaced
// by the running value, and folded in: run = decay run + own. In chunk order,
// or in reverse.
template <bool REVERSE>
__device__ __forceinline__ void pass_window(float* slot, i64 stride, const float* decay, int wn,
                                            int valid, float (&run)[ssd_bwd::PASS_E]) {
    using namespace ssd_bwd;
    for (int i0 = 0; i0 < wn; i0 += PASS_D) {
        float own[PASS_D][PASS_E];
#pragma unroll
        for (int d = 0; d < PASS_D; ++d) {
            const int i = REVERSE ? wn - 1 - (i0 + d) : i0 + d;
            pass_load(slot + i * stride, i0 + d < wn ? valid : 0, own[d]);
        }
#pragma unroll
        for (int d = 0; d < PASS_D; ++d) {
            if (i0 + d >= wn) break;
            const int i = REVERSE ? wn - 1 - (i0 + d) : i0 + d;
            const float dec = decay[i];
            pass_store(slot + i * stride, valid, run);
#pragma unroll
            for (int k = 0; k < PASS_E; ++k) run[k] = dec * run[k] + own[d][k];
        }
    }
}

// The decays exp2(s_last) of chunks [w0, w0 + wn) of the sequence starting at
// chunk c0, into `decay` (block-wide: every thread calls it).
__device__ __forceinline__ void stage_decays(const SsdBwdArgs& a, float* decay, i64 c0, i64 w0,
                                             int wn, int h) {
    __syncthreads();  // the previous window's readers are done
    if ((int)threadIdx.x < wn) {
        const i64 c = c0 + w0 + threadIdx.x;
        const i64 last = a.chunks[2 * c] + a.chunks[2 * c + 1] - 1;
        decay[threadIdx.x] = exp2f(a.ws_cum[last * a.H + h]);
    }
    __syncthreads();
}

// Three blocks per SM: 79 registers, 6 chunks x 16 bytes in flight per thread
// (unbounded, ptxas took 96 registers: 2 blocks).
extern "C" __global__ void __launch_bounds__(256, 3) ssd_bwd_pass(const SsdBwdArgs a) {
    using namespace ssd_bwd;
    BWD_SMEM_BASE;
    BWD_SHARED(decay, PASS_W, 0);
    const int H = a.H;
    const i64 slices = gridDim.x / ((i64)a.nseqs * H);
    const i64 slice = blockIdx.x % slices;
    const i64 s = blockIdx.x / slices / H;
    const int h = (int)(blockIdx.x / slices % H);
    const i64 c0 = a.seqs[2 * s];
    const i64 nc = a.seqs[2 * s + 1];
    // Slices of whole vectors (the last ones may be empty).
    const i64 per = ((PN + slices - 1) / slices + PASS_E - 1) / PASS_E * PASS_E;
    const i64 lo = slice * per < PN ? slice * per : PN;
    const i64 hi = lo + per < PN ? lo + per : PN;
    const i64 stride = (i64)H * PN;
    const i64 state0 = (s * H + h) * PN;
    // Block-uniform bounds: every thread reaches the barriers of stage_decays.
    for (i64 base = lo; base < hi; base += NT * PASS_E) {
        const i64 e0 = base + (i64)PASS_E * threadIdx.x;
        const int valid = e0 >= hi ? 0 : (hi - e0 < PASS_E ? (int)(hi - e0) : PASS_E);
        float run[PASS_E] = {0.0f, 0.0f, 0.0f, 0.0f};
#if SSD_HAS_S0
        pass_load(a.s0 + state0 + e0, valid, run);
#endif
        for (i64 w0 = 0; w0 < nc; w0 += PASS_W) {
            const int wn = (int)(nc - w0 < PASS_W ? nc - w0 : PASS_W);
            stage_decays(a, decay, c0, w0, wn, h);
            pass_window<false>(a.ws_S + ((c0 + w0) * H + h) * PN + e0, stride, decay, wn, valid, run);
        }
#pragma unroll
        for (int k = 0; k < PASS_E; ++k) run[k] = 0.0f;
#if SSD_HAS_DFINAL
        pass_load(a.dfinal + state0 + e0, valid, run);
#endif
        for (i64 w_end = nc; w_end > 0; w_end -= PASS_W) {
            const i64 w0 = w_end > PASS_W ? w_end - PASS_W : 0;
            const int wn = (int)(w_end - w0);
            stage_decays(a, decay, c0, w0, wn, h);
            pass_window<true>(a.ws_G + ((c0 + w0) * H + h) * PN + e0, stride, decay, wn, valid, run);
        }
#if SSD_HAS_S0
        pass_store(a.dinit + state0 + e0, valid, run);
#endif
    }
}

#if !SSD_BWD_TILED
// Stage E: per (chunk, head).
extern "C" __global__ void __launch_bounds__(256) ssd_bwd_grad(const SsdBwdArgs a) {
    using namespace ssd_bwd;
    BWD_SMEM_BASE;
    BWD_SHARED(s_c, Q, 0);
    BWD_SHARED(dt_c, Q, Q);
    BWD_SHARED(e_c, Q, 2 * Q);
    BWD_SHARED(f_c, Q, 3 * Q);
    BWD_SHARED(ddt_c, Q, 4 * Q);
    BWD_SHARED(da_c, Q, 5 * Q);
    BWD_SHARED(red, NT, 6 * Q);
    const int tid = threadIdx.x;
    SSD_BWD_CHUNK_HEAD(a);
    const float* S = a.ws_S + (c * H + h) * PN;
    const float* Gr = a.ws_G + (c * H + h) * PN;
    const float* cb = a.ws_cb + (c * G + g) * Q * Q;
    float* gx = a.ws_gx + (c * H + h) * Q * Q;
    const i64 hp0 = (i64)h * P;

    for (int i = tid; i < len; i += NT) {
        s_c[i] = a.ws_cum[(tok + i) * H + h];
        dt_c[i] = a.ws_dt[(tok + i) * H + h];
    }
    // gx_ij = dy_i . x_j (j <= i); S C_i and G B_j.
    for (int e = tid; e < len * len; e += NT) {
        const int i = e / len, j = e % len;
        if (j > i) continue;
        float acc = 0.0f;
        for (int p = 0; p < P; ++p)
            acc += a.ws_dy[(tok + i) * HP + hp0 + p] * ld(a.x, (tok + j) * HP + hp0 + p);
        gx[i * Q + j] = acc;
    }
#if SSD_BWD_MMA
    // S C_i and G B_i on the tensor cores: SC = C (Q x N) S^T and GB = B G^T,
    // m16n8k16 tiles over (tokens, p) with k = n. C and B are the inputs' own
    // 16-bit values; the f32 states are split into three bf16 parts (three MMAs
    // each, split_pair), so the f32 accumulators see the SIMT loop's products to
    // about 2^-24 (docs/kernels/mamba2-ssd-bwd.md, "v2").
    {
        constexpr int MT = Q / 16, PT = P / 8, KT = N / 16;
        const int warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
        for (int tile = warp; tile < MT * PT; tile += NT / 32) {
            const int r0 = (tile / PT) * 16 + gq, r1 = r0 + 8;
            const int pc = (tile % PT) * 8 + gq;  // this lane's column of the B operand
            if ((tile / PT) * 16 >= len) continue;  // every row past the chunk: nothing to write
            float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, gb[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            const i64 row0 = (tok + r0) * GN + (i64)g * N, row1 = (tok + r1) * GN + (i64)g * N;
            for (int kt = 0; kt < KT; ++kt) {
                const int k0 = kt * 16 + tq * 2;
                u32 ca[4], ba[4];
                // Rows past the chunk read nothing (they may lie past the tensor).
                ca[0] = r0 < len ? ld_pair(a.C, row0 + k0) : 0u;
                ca[1] = r1 < len ? ld_pair(a.C, row1 + k0) : 0u;
                ca[2] = r0 < len ? ld_pair(a.C, row0 + k0 + 8) : 0u;
                ca[3] = r1 < len ? ld_pair(a.C, row1 + k0 + 8) : 0u;
                ba[0] = r0 < len ? ld_pair(a.B, row0 + k0) : 0u;
                ba[1] = r1 < len ? ld_pair(a.B, row1 + k0) : 0u;
                ba[2] = r0 < len ? ld_pair(a.B, row0 + k0 + 8) : 0u;
                ba[3] = r1 < len ? ld_pair(a.B, row1 + k0 + 8) : 0u;
                const float* sp = S + (i64)pc * N + k0;
                const float* gp = Gr + (i64)pc * N + k0;
                u32 k0s[3], k8s[3];
                split_pair(sp[0], sp[1], k0s);
                split_pair(sp[8], sp[9], k8s);
                for (int t = 0; t < 3; ++t) mma16816(sc, ca, k0s[t], k8s[t]);
                split_pair(gp[0], gp[1], k0s);
                split_pair(gp[8], gp[9], k8s);
                for (int t = 0; t < 3; ++t) mma16816(gb, ba, k0s[t], k8s[t]);
            }
            // Accumulator e: row r0 (e < 2) or r1, column 2 tq + e % 2 of the tile.
            for (int e = 0; e < 4; ++e) {
                const int i = e < 2 ? r0 : r1;
                if (i >= len) continue;
                const i64 off = (tok + i) * HP + hp0 + (tile % PT) * 8 + 2 * tq + (e % 2);
                a.ws_sc[off] = sc[e];
                a.ws_gb[off] = gb[e];
            }
        }
    }
#else
    for (int e = tid; e < len * P; e += NT) {
        const int i = e / P, p = e % P;
        float sc = 0.0f, gb = 0.0f;
        for (int n = 0; n < N; ++n) {
            const i64 bc = (tok + i) * GN + (i64)g * N + n;
            sc += ld(a.C, bc) * S[(i64)p * N + n];
            gb += ld(a.B, bc) * Gr[(i64)p * N + n];
        }
        a.ws_sc[(tok + i) * HP + hp0 + p] = sc;
        a.ws_gb[(tok + i) * HP + hp0 + p] = gb;
    }
#endif
    // The carried term exp2(q) <G, S>, a fixed-order block sum.
    float part = 0.0f;
    for (i64 e = tid; e < PN; e += NT) part += Gr[e] * S[e];
    const float gs = block_sum(part, red);  // (its barriers publish the writes above)
    const float q = s_c[len - 1];
    const float carried = exp2f(q) * gs;

    // e_i = exp2(s_i) dy_i . (S C_i), f_j = exp2(q - s_j) x_j . (G B_j).
    for (int i = tid; i < len; i += NT) {
        float ei = 0.0f, fi = 0.0f;
        for (int p = 0; p < P; ++p) {
            const i64 off = (tok + i) * HP + hp0 + p;
            ei += a.ws_dy[off] * a.ws_sc[off];
            fi += ld(a.x, off) * a.ws_gb[off];
        }
        e_c[i] = exp2f(s_c[i]) * ei;
        f_c[i] = exp2f(q - s_c[i]) * fi;
    }
    __syncthreads();

    // dx and dz, per (token, p).
    for (int e = tid; e < len * P; e += NT) {
        const int j = e / P, p = e % P;
        const i64 off = (tok + j) * HP + hp0 + p;
        const float dsk = d_skip(a, h, p);
        float dxv = dsk * a.ws_dy[off] + exp2f(q - s_c[j]) * dt_c[j] * a.ws_gb[off];
        for (int i = j; i < len; ++i)
            dxv += cb[i * Q + j] * exp2f(s_c[i] - s_c[j]) * dt_c[j] * a.ws_dy[(tok + i) * HP + hp0 + p];
        store_elem(a.dx + off, dxv);
#if SSD_HAS_Z
        // dz needs the forward's pre-gate y, recomputed (row j of the output).
        float y = exp2f(s_c[j]) * a.ws_sc[off];
        for (int k = 0; k <= j; ++k)
            y += cb[j * Q + k] * exp2f(s_c[j] - s_c[k]) * dt_c[k] * ld(a.x, (tok + k) * HP + hp0 + p);
        y += dsk * ld(a.x, off);
        const float zv = ld(a.z, off);
        store_elem(a.dz + off, ld(a.dout, off) * y * silu_grad(zv));
#endif
    }
    // Per-head dC, dB, per (token, n).
    for (int e = tid; e < len * N; e += NT) {
        const int i = e / N, n = e % N;
        float dcv = 0.0f, dbv = 0.0f;
        for (int p = 0; p < P; ++p) {
            const i64 off = (tok + i) * HP + hp0 + p;
            dcv += S[(i64)p * N + n] * a.ws_dy[off];
            dbv += Gr[(i64)p * N + n] * ld(a.x, off);
        }
        dcv *= exp2f(s_c[i]);
        dbv *= exp2f(q - s_c[i]) * dt_c[i];
        for (int j = 0; j <= i; ++j)
            dcv += exp2f(s_c[i] - s_c[j]) * dt_c[j] * gx[i * Q + j] * ld(a.B, (tok + j) * GN + (i64)g * N + n);
        for (int k = i; k < len; ++k)
            dbv += exp2f(s_c[k] - s_c[i]) * dt_c[i] * gx[k * Q + i] * ld(a.C, (tok + k) * GN + (i64)g * N + n);
        a.ws_dch[((tok + i) * H + h) * N + n] = dcv;
        a.ws_dbh[((tok + i) * H + h) * N + n] = dbv;
    }
    // Direct d dt'_j and the log-decay gradients da_k, each summed from the terms
    // whose segment holds k (row prefixes, suffixes; docs/BACKWARD-SSD.md §5).
    for (int k = tid; k < len; k += NT) {
        float direct = f_c[k];
        for (int i = k; i < len; ++i) direct += cb[i * Q + k] * exp2f(s_c[i] - s_c[k]) * gx[i * Q + k];
        float da = 0.0f;
        for (int i = k; i < len; ++i) {
            float pre = 0.0f;
            for (int j = 0; j < k; ++j)
                pre += cb[i * Q + j] * exp2f(s_c[i] - s_c[j]) * dt_c[j] * gx[i * Q + j];
            da += pre;
        }
        float suffix = 0.0f;
        for (int i = k; i < len; ++i) suffix += e_c[i];
        float prefix = 0.0f;
        for (int j = 0; j < k; ++j) prefix += dt_c[j] * f_c[j];
        da += suffix + carried + prefix;
        ddt_c[k] = direct;
        da_c[k] = da;
    }
    __syncthreads();
    // The dt chain (per token), then the partials in a fixed order.
    float* part_out = dt_chain_and_partials(a, c, h, tok, len, dt_c, ddt_c, da_c);
    for (int p = tid; p < P; p += NT) {
        float acc = 0.0f;
#if SSD_D_MODE != 0
        for (int i = 0; i < len; ++i) {
            const i64 off = (tok + i) * HP + hp0 + p;
            acc += a.ws_dy[off] * ld(a.x, off);
        }
#endif
        part_out[2 * H + h * P + p] = acc;
    }
}

#endif  // !SSD_BWD_TILED

#if SSD_BWD_TILED
#include "ssd_bwd_tiled.cuh"
#endif

// dB, dC: the heads of each group summed in index order, per (token, group, n).
extern "C" __global__ void __launch_bounds__(256) ssd_bwd_reduce_bc(const SsdBwdArgs a) {
    using namespace ssd_bwd;
    const int H = a.H, G = a.G, hpg = H / G;
    const i64 total = a.ntok * G * N;
    for (i64 e = (i64)blockIdx.x * NT + threadIdx.x; e < total; e += (i64)gridDim.x * NT) {
        const i64 t = e / ((i64)G * N);
        const int g = (int)((e / N) % G), n = (int)(e % N);
        float db = 0.0f, dc = 0.0f;
        for (int h = g * hpg; h < (g + 1) * hpg; ++h) {
            db += a.ws_dbh[(t * H + h) * N + n];
            dc += a.ws_dch[(t * H + h) * N + n];
        }
        store_elem(a.dB + e, db);
        store_elem(a.dC + e, dc);
    }
}

// dA, d dt_bias, dD: the chunk partials summed in chunk order, one block per
// head. Each thread sums one slot of the head (dA, dt_bias, one p of D) over the
// chunks; the loop's loads are independent, so they overlap (v1 summed dD of
// shape (H) on one thread per head: P x chunks loads in a chain, 1 ms).
extern "C" __global__ void __launch_bounds__(256) ssd_bwd_reduce_params(const SsdBwdArgs a) {
    using namespace ssd_bwd;
    const int H = a.H;
    const int h = blockIdx.x;
    const i64 stride = (i64)H * (2 + P);
#if SSD_D_MODE == 1
    BWD_SMEM_BASE;
    BWD_SHARED(col, P, 0);
#endif
    for (int slot = threadIdx.x; slot < 2 + P; slot += NT) {
        const i64 idx = slot == 0 ? h : slot == 1 ? H + h : 2 * H + (i64)h * P + (slot - 2);
        float acc = 0.0f;
#pragma unroll 8
        for (i64 c = 0; c < a.nchunks; ++c) acc += a.ws_part[c * stride + idx];
        if (slot == 0) {
            a.dA[h] = acc;
        } else if (slot == 1) {
#if SSD_DT_BIAS
            a.ddt_bias[h] = acc;
#endif
        } else {
#if SSD_D_MODE == 2
            a.dD[(i64)h * P + (slot - 2)] = acc;
#elif SSD_D_MODE == 1
            col[slot - 2] = acc;
#endif
        }
    }
#if SSD_D_MODE == 1
    // D of shape (H): the per-p sums, then over p in order.
    __syncthreads();
    if (threadIdx.x == 0) {
        float d = 0.0f;
        for (int p = 0; p < P; ++p) d += col[p];
        a.dD[h] = d;
    }
#endif
}
