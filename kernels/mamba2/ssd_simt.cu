// Mamba-2 SSD chunked forward on CUDA cores, f32 arithmetic throughout
// (docs/DESIGN.md §1.2). The f32 path (tf32 tensor cores would miss the 1e-5 budget)
// and the fallback for f16/bf16 shapes the fused kernel does not take (N not a
// multiple of 16, N > 256, P not a multiple of 32, too much shared memory).
//
// Same five steps and the same work items as ssd_fused.cu, organised for clarity
// rather than speed: one block of 256 threads per (item, head, 32 columns of P);
// the 32 x N f32 state lives in shared memory; each chunk is processed in blocks
// of 64 rows (i) and 64 columns (j), with B and C streamed through shared memory
// in tiles of 32 state columns. Any N and P are accepted (tiles are masked).
//
// Compile-time defines (crates/mamba2-ssd/src/cuda/config.rs):
//   SSD_DTYPE 0|1|2, SSD_Q (a multiple of 64), SSD_N, SSD_P, SSD_DT_BIAS,
//   SSD_DT_SOFTPLUS, SSD_D_MODE, SSD_HAS_Z, SSD_HAS_S0, SSD_FINAL, SSD_STATE_ONLY,
//   SSD_MAX_SMEM (the device's per-block shared memory).
#include "ssd_common.cuh"

namespace ssd_simt {

constexpr int Q = SSD_Q;
constexpr int N = SSD_N;
constexpr int P = SSD_P;
constexpr int NT = 256;
constexpr int PT = 32;   // head-dim columns per block
constexpr int IB = 64;   // rows (and columns) per block of the chunk
constexpr int NTILE = 32;
constexpr int NPT = (P + PT - 1) / PT;
constexpr int NSTEPS = (N + NTILE - 1) / NTILE;
#ifdef SSD_STATE_ONLY
constexpr bool STATE_ONLY = SSD_STATE_ONLY != 0;
#else
constexpr bool STATE_ONLY = false;
#endif
static_assert(Q % IB == 0, "chunk must be a multiple of 64");

// Shared memory (floats).
constexpr int SS = N + 1;  // state row stride
constexpr int OFF_S = 0;
constexpr int OFF_CUM = OFF_S + PT * SS;             // s[Q], dt'[Q], w[Q]
constexpr int OFF_CT = OFF_CUM + 3 * Q;              // C tile [64][33]
constexpr int OFF_BT = OFF_CT + IB * (NTILE + 1);    // B tile [64][33]
constexpr int OFF_L = OFF_BT + IB * (NTILE + 1);     // L block [64][65]
constexpr int OFF_X = OFF_L + IB * (IB + 1);         // x block [64][33]
constexpr int SMEM_FLOATS = OFF_X + IB * (PT + 1);
constexpr int SMEM_BYTES = SMEM_FLOATS * 4;
// The device's opt-in shared memory per block, from the launcher (DeviceLimits);
// 227 KiB (sm_90) when built without it (the CPU emulation).
#ifndef SSD_MAX_SMEM
#define SSD_MAX_SMEM (227 * 1024)
#endif
static_assert(SMEM_BYTES <= SSD_MAX_SMEM, "shared memory past the device's per-block limit");

struct Ctx {
    const elem_t* x;
    const elem_t* B;
    const elem_t* C;
    i64 HP, GN;
    int h, g, p0;  // head, group, first column of this block's P tile
};

// rows [r0, r0 + 64) of x (this block's PT columns), f32, zero past clen / P.
SSD_DEV void load_x_block(float* xt, const Ctx& k, i64 tok, int r0, int clen) {
    for (int e = threadIdx.x; e < IB * PT; e += NT) {
        const int r = e / PT, c = e % PT;
        const int i = r0 + r;
        float v = 0.0f;
        if (i < clen && k.p0 + c < P) v = elem_to_f32(k.x[(tok + i) * k.HP + (i64)k.h * P + k.p0 + c]);
        xt[r * (PT + 1) + c] = v;
    }
}

// rows [r0, r0 + 64), state columns [n0, n0 + 32) of B or C, f32, zero-padded.
SSD_DEV void load_bc_tile(float* t, const elem_t* src, const Ctx& k, i64 tok, int r0, int n0,
                          int clen) {
    for (int e = threadIdx.x; e < IB * NTILE; e += NT) {
        const int r = e / NTILE, c = e % NTILE;
        const int i = r0 + r;
        float v = 0.0f;
        if (i < clen && n0 + c < N) v = elem_to_f32(src[(tok + i) * k.GN + (i64)k.g * N + n0 + c]);
        t[r * (NTILE + 1) + c] = v;
    }
}

}  // namespace ssd_simt

extern "C" __global__ void __launch_bounds__(256, 1)
    ssd_simt_fwd(const SsdArgs args) {
    using namespace ssd_simt;
    SSD_UNPACK_ARGS(args);
    SSM_DYNAMIC_SMEM(smem_raw);
    float* sm = reinterpret_cast<float*>(smem_raw);
    float* Sst = sm + OFF_S;
    float* s_c = sm + OFF_CUM;
    float* dtp_c = s_c + Q;
    float* w_c = s_c + 2 * Q;
    float* Ct = sm + OFF_CT;
    float* Bt = sm + OFF_BT;
    float* Lm = sm + OFF_L;
    float* Xt = sm + OFF_X;

    const int tid = threadIdx.x;
    SSD_UNPACK_ITEM(NPT);
    const int g = h / (H / G);
    const Ctx k{x, B, C, (i64)H * P, (i64)G * N, h, g, pt * PT};
    const i64 PN = (i64)P * N;
    const float A2 = A[h] * SSD_LOG2E;
    const float bias = SSD_DT_BIAS ? dt_bias[h] : 0.0f;

    // Initial state into shared memory (columns past P stay zero).
    bool have_state = false;
    for (int e = tid; e < PT * N; e += NT) {
        const int p = e / N, n = e % N;
        const int pg = pt * PT + p;
        float v = 0.0f;
        if (!STATE_ONLY && pg < P) {
#if SSD_HAS_S0
            v = s0[(seq * H + h) * PN + (i64)pg * N + n];
#endif
            for (int m = 0; m < seg; ++m)
                v = exp2f(ws_decay[(ws0 + m) * H + h]) * v +
                    ws_states[((ws0 + m) * H + h) * PN + (i64)pg * N + n];
        }
        Sst[p * SS + n] = v;
    }
    have_state = !STATE_ONLY && (SSD_HAS_S0 || seg > 0);
    __syncthreads();

    float dec_total = 0.0f;
    const int nchunks = (int)((len + Q - 1) / Q);
    for (int c = 0; c < nchunks; ++c) {
        const i64 tok = tok0 + (i64)c * Q;
        const int clen = (int)((len - (i64)c * Q) < Q ? (len - (i64)c * Q) : Q);

        // Step 1: one warp forms dt', s and w for the chunk.
        if (tid < 32) {
            constexpr int V = Q / 32;
            float dtp[V], pre[V], run;
            const float incl = ssd_warp_cumsum<V>(
                tid, clen, A2,
                [&](int j, int) {
                    return ssd_dt(elem_to_f32(dt[(tok + j) * H + h]), bias, dt_min, dt_max);
                },
                dtp, pre, run);
            const float s_last = __shfl_sync(0xffffffffu, incl, 31);
#pragma unroll
            for (int v = 0; v < V; ++v) {
                const int j = tid * V + v;
                const float s = incl - run + pre[v];
                s_c[j] = s;
                dtp_c[j] = dtp[v];
                w_c[j] = exp2f(s_last - s) * dtp[v];
            }
        }
        __syncthreads();
        const float s_last = s_c[Q - 1];
        dec_total += s_last;

        // Steps 2-3: output rows, 64 at a time.
        if (!STATE_ONLY) {
            const int yi = tid / 4;        // row within the 64-row block
            const int yp = (tid % 4) * 8;  // first of 8 columns
            for (int ib = 0; ib * IB < clen; ++ib) {
                float acc[8];
                #pragma unroll
                for (int q = 0; q < 8; ++q) acc[q] = 0.0f;
                if (have_state) {
                    for (int ns = 0; ns < NSTEPS; ++ns) {
                        load_bc_tile(Ct, C, k, tok, ib * IB, ns * NTILE, clen);
                        __syncthreads();
                        for (int n = 0; n < NTILE && ns * NTILE + n < N; ++n) {
                            const float cv = Ct[yi * (NTILE + 1) + n];
                            #pragma unroll
                            for (int q = 0; q < 8; ++q)
                                acc[q] += cv * Sst[(yp + q) * SS + ns * NTILE + n];
                        }
                        __syncthreads();
                    }
                    const float e = exp2f(s_c[ib * IB + yi]);
                    #pragma unroll
                    for (int q = 0; q < 8; ++q) acc[q] *= e;
                }
                for (int jb = 0; jb <= ib; ++jb) {
                    // C B^T block: thread owns row li = tid / 4, columns lj = tid % 4 + 4 m.
                    float cb[16];
                    #pragma unroll
                    for (int m = 0; m < 16; ++m) cb[m] = 0.0f;
                    for (int ns = 0; ns < NSTEPS; ++ns) {
                        load_bc_tile(Ct, C, k, tok, ib * IB, ns * NTILE, clen);
                        load_bc_tile(Bt, B, k, tok, jb * IB, ns * NTILE, clen);
                        __syncthreads();
                        for (int n = 0; n < NTILE; ++n) {
                            const float cv = Ct[yi * (NTILE + 1) + n];
                            #pragma unroll
                            for (int m = 0; m < 16; ++m)
                                cb[m] += cv * Bt[(tid % 4 + 4 * m) * (NTILE + 1) + n];
                        }
                        __syncthreads();
                    }
                    const int i = ib * IB + yi;
                    #pragma unroll
                    for (int m = 0; m < 16; ++m) {
                        const int j = jb * IB + tid % 4 + 4 * m;
                        Lm[yi * (IB + 1) + tid % 4 + 4 * m] =
                            j <= i ? cb[m] * exp2f(s_c[i] - s_c[j]) * dtp_c[j] : 0.0f;
                    }
                    load_x_block(Xt, k, tok, jb * IB, clen);
                    __syncthreads();
                    for (int j = 0; j < IB; ++j) {
                        const float l = Lm[yi * (IB + 1) + j];
                        #pragma unroll
                        for (int q = 0; q < 8; ++q) acc[q] += l * Xt[j * (PT + 1) + yp + q];
                    }
                    __syncthreads();
                }
                // Epilogue: + D x, z gate, store.
                const int i = ib * IB + yi;
                if (i < clen) {
                    #pragma unroll
                    for (int q = 0; q < 8; ++q) {
                        const int pg = pt * PT + yp + q;
                        if (pg >= P) continue;
                        const i64 off = (tok + i) * k.HP + (i64)h * P + pg;
                        float y = acc[q];
#if SSD_D_MODE == 1
                        y += D[h] * elem_to_f32(x[off]);
#elif SSD_D_MODE == 2
                        y += D[h * P + pg] * elem_to_f32(x[off]);
#endif
#if SSD_HAS_Z
                        y *= silu(elem_to_f32(z[off]));
#endif
                        store_elem(out + off, y);
                    }
                }
            }
        }

        // Step 4: S = exp2(s_last) S + sum_j w_j x_j B_j^T.
        const float dec = exp2f(s_last);
        for (int e = tid; e < PT * N; e += NT) Sst[(e / N) * SS + e % N] *= dec;
        __syncthreads();
        for (int jb = 0; jb * IB < clen; ++jb) {
            load_x_block(Xt, k, tok, jb * IB, clen);
            for (int ns = 0; ns < NSTEPS; ++ns) {
                load_bc_tile(Bt, B, k, tok, jb * IB, ns * NTILE, clen);
                __syncthreads();
                for (int e = tid; e < PT * NTILE; e += NT) {
                    const int p = e / NTILE, n = e % NTILE;
                    if (ns * NTILE + n >= N) continue;
                    float r = 0.0f;
                    for (int j = 0; j < IB; ++j)
                        r += w_c[jb * IB + j] * Xt[j * (PT + 1) + p] * Bt[j * (NTILE + 1) + n];
                    Sst[p * SS + ns * NTILE + n] += r;
                }
                __syncthreads();
            }
        }
        have_state = !STATE_ONLY;
    }

    float* dst = nullptr;
    if (STATE_ONLY) {
        dst = ws_states + ((ws0 + seg) * H + h) * PN;
        if (tid == 0 && pt == 0) ws_decay[(ws0 + seg) * H + h] = dec_total;
    } else {
#if SSD_FINAL
        if (seg == nseg - 1) dst = final_states + (seq * H + h) * PN;
#endif
    }
    if (dst != nullptr) {
        for (int e = tid; e < PT * N; e += NT) {
            const int p = e / N, n = e % N;
            if (pt * PT + p < P) dst[(i64)(pt * PT + p) * N + n] = Sst[p * SS + n];
        }
    }
    (void)nseg;
    (void)cbw;  // the C B^T workspace serves the fused kernel only
}
