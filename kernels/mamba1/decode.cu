// Mamba-1 decode step (docs/DESIGN.md §1.3): one token per batch row, the state cache
// (cache_rows, D_in, N) f32 read, updated and written back in place.
//
//   dt      = softplus?(dt[i,d] + dt_bias[d])
//   h[d,n]  = exp(dt A[d,n]) h[d,n] + dt B[i,g,n] x[i,d]      (g = d / (D_in / G))
//   y[d]    = sum_n C[i,g,n] h[d,n] + D[d] x[i,d];   out = y * silu(z[i,d])
//
// A streaming pass over the state (2 * D_in * N * 4 bytes per batch row; the
// inputs and outputs are a few bytes per channel), built to move bytes:
//   * the N states of a channel are spread over TPR lanes, each holding VPT vectors
//     of VEC floats (16-byte accesses when N % 4 == 0), so one warp instruction
//     touches 32 * VEC * 4 contiguous bytes of the state (512 B);
//   * each thread updates the same channel slice for BROWS batch rows, so A (and
//     D, dt_bias) are read once per BROWS rows; its BROWS * VPT 16-byte state loads
//     are issued first, before anything else is fetched;
//   * only the state stays in registers across rows: B and C are fetched row by
//     row (ordered loads, L1 hits), packed, BC_PREFETCH rows ahead of their use,
//     which keeps the register count low enough for 4 blocks of 256 threads per
//     SM (v1 held every row's B and C and ran 2 blocks per SM; v2 fetched them
//     just in time, after the step-size math, see docs/kernels/decode.md);
//     or (BC_SHARED) the block stages its rows of B and C in shared memory once,
//     while its state loads are in flight, and every row reads them from there:
//     no registers wait for them and no thread waits on L2 during the update
//     (v4, for f32 inputs, whose prefetched B and C do not fit the register cap);
//   * B and C are read with VEC-element accesses (8 bytes for 16-bit inputs);
//   * exp(dt A) is one exp2 per state element with log2(e) folded into A on load;
//   * y[d] is reduced over the TPR lanes of its channel with xor shuffles;
//   * the per-(row, channel) scalar work (loads of x, dt, z; softplus; silu; the
//     output store) is spread over the TPR lanes of a channel instead of repeated
//     by each of them: lane j owns rows j, j + TPR, ... and hands dt and dt * x to
//     the others by shuffle.
// All index arithmetic is 64-bit.
//
// Compile-time defines (chosen by crates/mamba1-scan/src/decode_cuda.rs):
//   D_STATE       N
//   VEC           floats per vector access: 4, 2 or 1 (largest that divides N)
//   TPR           lanes per channel: a power of two dividing 32
//   BROWS         batch rows per thread (unrolled)
//   WARPS         warps per block
//   STREAM_STATE  1: state loads and stores carry evict-first cache hints
//   MIN_BLOCKS    blocks per SM that ptxas must leave room for (caps registers)
//   BC_PREFETCH   rows of B and C fetched ahead of their update (0: just in time)
//   BC_SHARED     groups of B and C a block stages in shared memory (0: none); a
//                 block whose channels span more groups reads them just in time

#if !defined(D_STATE) || !defined(VEC) || !defined(TPR) || !defined(BROWS) || !defined(WARPS)
#error "mamba1/decode.cu needs D_STATE, VEC, TPR, BROWS and WARPS defined"
#endif
#ifndef BC_PREFETCH
#define BC_PREFETCH 1
#endif
#ifndef BC_SHARED
#define BC_SHARED 0
#endif
#if BC_SHARED && BC_PREFETCH
#error "BC_SHARED replaces BC_PREFETCH: define BC_PREFETCH 0"
#endif

// ---------------------------------------------------------------------------
// Element types, scalar math (the exact forms of ssm_core::math) and vector
// access to the state, shared with the other family's decode kernel.
// ---------------------------------------------------------------------------

#include "common/math.cuh"
#include "common/decode_state.cuh"
// The state is f32 here: a 16-bit state (v6) is Mamba-2's only, since this kernel
// also reads A and its staged B/C in state-layout vectors (docs/kernels/decode.md).
#if DECODE_STATE_DTYPE != 0
#error "mamba1/decode.cu stores the state in f32 only (DECODE_STATE_DTYPE 0)"
#endif

// VEC input elements (B or C) as loaded, still packed: 16-bit inputs take half the
// registers of floats while they wait for their row.
template <typename T> struct RawInputs { unsigned w[VEC]; };  // f32: one word each
template <> struct RawInputs<bf16_t> { unsigned w[(VEC + 1) / 2]; };
template <> struct RawInputs<f16_t> { unsigned w[(VEC + 1) / 2]; };

// Ordered (volatile) loads: they stay where the code puts them instead of being
// hoisted, so the register budget holds.
__device__ __forceinline__ void load_raw(const float* p, RawInputs<float>& r) {
#if VEC == 4
    asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3]) : "l"(p));
#elif VEC == 2
    asm volatile("ld.global.v2.u32 {%0, %1}, [%2];" : "=r"(r.w[0]), "=r"(r.w[1]) : "l"(p));
#else
    asm volatile("ld.global.u32 %0, [%1];" : "=r"(r.w[0]) : "l"(p));
#endif
}
template <typename H>
__device__ __forceinline__ void load_raw(const H* p, RawInputs<H>& r) {
#if VEC == 4
    asm volatile("ld.global.v2.u32 {%0, %1}, [%2];" : "=r"(r.w[0]), "=r"(r.w[1]) : "l"(p));
#elif VEC == 2
    asm volatile("ld.global.u32 %0, [%1];" : "=r"(r.w[0]) : "l"(p));
#else
    unsigned short u;
    asm volatile("ld.global.u16 %0, [%1];" : "=h"(u) : "l"(p));
    r.w[0] = u;
#endif
}
__device__ __forceinline__ void unpack_raw(const RawInputs<float>& r, float* f) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) f[e] = __uint_as_float(r.w[e]);
}
template <typename H>
__device__ __forceinline__ void unpack_raw(const RawInputs<H>& r, float* f) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        const unsigned w = r.w[e / 2];
        f[e] = to_f32(H{(unsigned short)((e % 2) ? (w >> 16) : (w & 0xffffu))});
    }
}
template <typename T>
__device__ __forceinline__ void zero_raw(RawInputs<T>& r) {
#pragma unroll
    for (int e = 0; e < (int)(sizeof(r.w) / sizeof(r.w[0])); ++e) r.w[e] = 0u;
}

// ---------------------------------------------------------------------------
// Launch geometry.
// ---------------------------------------------------------------------------

// VPT, EPT, SLOTS (channels a warp covers side by side) and THREADS come from
// common/decode_state.cuh.
constexpr int CHANNELS_PER_BLOCK = WARPS * SLOTS;
constexpr int SROWS = (BROWS + TPR - 1) / TPR;  // batch rows whose scalars a lane owns

// Kernel arguments, passed by value. Mirrors `RawDecodeArgs` in
// crates/mamba1-scan/src/decode_cuda.rs field by field (sizes asserted on both sides).
struct Mamba1DecodeArgs {
    const void* x;                              // (b, D_in)      T
    const void* dt;                             // (b, D_in)      T
    const float* A;                             // (D_in, N)
    const void* B;                              // (b, G, N)      T
    const void* C;                              // (b, G, N)      T
    const float* D;                             // (D_in), or null
    const void* z;                              // (b, D_in)      T, or null
    const float* dt_bias;                       // (D_in), or null
    const long long* state_batch_indices;       // (b), or null; negative = padding
    float* state;                               // (cache_rows, D_in, N)
    void* out;                                  // (b, D_in)      T
    long long batch;
    long long d_inner;
    long long groups;
    long long cache_rows;
    int dt_softplus;
    unsigned channels_per_group;                // D_in / G
};
static_assert(sizeof(Mamba1DecodeArgs) == 128, "Mamba1DecodeArgs layout changed: update decode_cuda.rs");

// Cache row of batch row i; -1 (padding) for rows past the batch.
__device__ __forceinline__ long long cache_row(const Mamba1DecodeArgs& a, long long i) {
    if (i >= a.batch) return -1;
    return a.state_batch_indices ? a.state_batch_indices[i] : i;
}

// One block updates CHANNELS_PER_BLOCK channels for BROWS batch rows. Blocks are
// ordered (batch tile, channel tile) with the channel tile fastest, so neighbouring
// blocks stream neighbouring memory.
template <typename T>
__device__ __forceinline__ void decode_step(const Mamba1DecodeArgs& a) {
    // DEPENDENT_LAUNCH (common/decode_state.cuh): nothing is read before the wait.
    decode_allow_dependents();
    decode_wait_for_predecessor();
    const long long Din = a.d_inner;
    // 32-bit division: the host checks that the grid and D_in fit in 31 bits.
    const unsigned ctiles = ((unsigned)Din + CHANNELS_PER_BLOCK - 1) / CHANNELS_PER_BLOCK;
    const unsigned ctile = blockIdx.x % ctiles;
    const long long i0 = (long long)(blockIdx.x / ctiles) * BROWS;

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int slot = lane / TPR;  // which channel of the warp's side-by-side channels
    const int sub = lane % TPR;   // which part of that channel's states
    const long long d = (long long)ctile * CHANNELS_PER_BLOCK + warp * SLOTS + slot;
    const bool channel_live = d < Din;
    // Element j = k * VEC + e of this lane is state index n(k, e): for a fixed k the
    // warp's lanes cover contiguous memory.
#define STATE_INDEX(k, e) (lane_state_index(sub, (k)) + (e))

    // Cache rows of the BROWS batch rows (every lane needs them for the addresses),
    // kept as 32-bit row numbers to save registers; -1 marks a row with no state
    // (padding, past the batch, or an index past the cache).
    int cache[BROWS];
#pragma unroll
    for (int r = 0; r < BROWS; ++r) {
        const long long c = cache_row(a, i0 + r);
        cache[r] = (channel_live && c >= 0 && c < a.cache_rows) ? (int)c : -1;
    }

    // First thing: every state load of this thread, so that they are in flight
    // while everything else is fetched and computed.
    float s[BROWS][EPT];
#pragma unroll
    for (int r = 0; r < BROWS; ++r) {
        load_state_slice(a.state, ((long long)cache[r] * Din + d) * D_STATE, sub, cache[r] >= 0, s[r]);
    }

    // Per-channel parameters, read once for all BROWS rows.
    float a2[EPT];  // A * log2(e)
    float d_skip = 0.0f, bias = 0.0f;
    unsigned g = 0;
    if (channel_live) {
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            unpack(*reinterpret_cast<const state_vec*>(a.A + d * D_STATE + STATE_INDEX(k, 0)), &a2[k * VEC]);
        }
#pragma unroll
        for (int j = 0; j < EPT; ++j) a2[j] *= SSM_LOG2E;
        if (a.D) d_skip = a.D[d];
        if (a.dt_bias) bias = a.dt_bias[d];
        g = (unsigned)d / a.channels_per_group;
    } else {
#pragma unroll
        for (int j = 0; j < EPT; ++j) a2[j] = 0.0f;
    }

    // Per-(row, channel) scalars are owned by one lane of the channel: lane `sub`
    // owns rows r = q * TPR + sub. It loads x, dt and z once, computes the step size
    // once, and later finishes the row's output; the state update of the other
    // lanes gets dt and dt * x by shuffle.
    float dt_own[SROWS], x_own[SROWS], z_own[SROWS];
#pragma unroll
    for (int q = 0; q < SROWS; ++q) {
        const int r = q * TPR + sub;
        const long long i = i0 + r;
        const long long c = r < BROWS ? cache_row(a, i) : -1;
        const bool own_live = channel_live && c >= 0 && c < a.cache_rows;
        const long long id = i * Din + d;
        x_own[q] = own_live ? to_f32(static_cast<const T*>(a.x)[id]) : 0.0f;
        dt_own[q] = own_live ? to_f32(static_cast<const T*>(a.dt)[id]) : 0.0f;
        z_own[q] = (own_live && a.z) ? to_f32(static_cast<const T*>(a.z)[id]) : 0.0f;
    }

    // B and C of row r, packed, fetched ahead of their use. With BC_PREFETCH the
    // first rows' loads go out before the step sizes are computed (which waits on
    // dt from memory) and row r + BC_PREFETCH is fetched while row r is updated;
    // without it each row's B and C are fetched just before its update.
    const T* Bbase = static_cast<const T*>(a.B) + (long long)g * D_STATE;
    const T* Cbase = static_cast<const T*>(a.C) + (long long)g * D_STATE;
    const long long bc_row_stride = (long long)a.groups * D_STATE;
    constexpr int BC_DEPTH = BC_PREFETCH > 0 ? BC_PREFETCH + 1 : 1;
    RawInputs<T> braw[BC_DEPTH][VPT], craw[BC_DEPTH][VPT];
#define FETCH_BC(r)                                                                   \
    do {                                                                              \
        _Pragma("unroll") for (int k = 0; k < VPT; ++k) {                             \
            if (cache[(r)] >= 0) {                                                    \
                load_raw(Bbase + (i0 + (r)) * bc_row_stride + STATE_INDEX(k, 0),      \
                         braw[(r) % BC_DEPTH][k]);                                    \
                load_raw(Cbase + (i0 + (r)) * bc_row_stride + STATE_INDEX(k, 0),      \
                         craw[(r) % BC_DEPTH][k]);                                    \
            } else {                                                                  \
                zero_raw(braw[(r) % BC_DEPTH][k]);                                    \
                zero_raw(craw[(r) % BC_DEPTH][k]);                                    \
            }                                                                         \
        }                                                                             \
    } while (0)
#pragma unroll
    for (int r = 0; r < BC_PREFETCH && r < BROWS; ++r) FETCH_BC(r);

#if BC_SHARED
    // B and C of the block's BROWS rows for the (at most BC_SHARED) groups its
    // channels read, widened to f32 once. The stores wait for the loads (L2), but
    // the state loads issued above are in flight meanwhile, and the update needs
    // those anyway. `staged` is the same for every thread of the block.
    __shared__ __align__(16) float bc_stage[2][BROWS][BC_SHARED][D_STATE];
    const long long d_first = (long long)ctile * CHANNELS_PER_BLOCK;
    const long long d_last = min(d_first + CHANNELS_PER_BLOCK, Din) - 1;
    const unsigned g_first = (unsigned)d_first / a.channels_per_group;
    const int block_groups = (int)((unsigned)d_last / a.channels_per_group - g_first) + 1;
    const bool staged = block_groups <= BC_SHARED;
    if (staged) {
        // Compile-time bounds and divisors keep the index math in few registers.
        for (int idx = threadIdx.x; idx < BROWS * BC_SHARED * D_STATE; idx += THREADS) {
            const int n = idx % D_STATE;
            const int gi = (idx / D_STATE) % BC_SHARED;
            const int r = idx / (D_STATE * BC_SHARED);
            float bn = 0.0f, cn = 0.0f;
            if (gi < block_groups && i0 + r < a.batch) {
                const long long at = ((i0 + r) * a.groups + g_first + gi) * D_STATE + n;
                bn = to_f32(static_cast<const T*>(a.B)[at]);
                cn = to_f32(static_cast<const T*>(a.C)[at]);
            }
            bc_stage[0][r][gi][n] = bn;
            bc_stage[1][r][gi][n] = cn;
        }
    }
    // This thread's group among the staged ones (dead channels read group 0).
    const int staged_group = channel_live ? (int)(g - g_first) : 0;
#else
    const bool staged = false;
#endif

    // Step sizes, and the output's skip term and gate, computed now so that only
    // one value per owned row waits through the state update for each.
    float dtx_own[SROWS], skip_own[SROWS], gate_own[SROWS];
#pragma unroll
    for (int q = 0; q < SROWS; ++q) {
        float dt = dt_own[q] + bias;
        if (a.dt_softplus) dt = ssm_softplus(dt);
        dt_own[q] = dt;
        dtx_own[q] = dt * x_own[q];
        skip_own[q] = d_skip * x_own[q];
        gate_own[q] = a.z ? ssm_silu(z_own[q]) : 1.0f;
    }

    // Update the state row by row; the owning lane keeps C . h.
    const int group_base = lane & ~(TPR - 1);
    float acc_own[SROWS];
#pragma unroll
    for (int q = 0; q < SROWS; ++q) acc_own[q] = 0.0f;
#if BC_SHARED
    __syncthreads();  // the staged B and C are complete
#endif
#pragma unroll
    for (int r = 0; r < BROWS; ++r) {
        float bv[EPT], cv[EPT];
        if (staged) {
#if BC_SHARED
#pragma unroll
            for (int k = 0; k < VPT; ++k) {
                unpack(*reinterpret_cast<const state_vec*>(&bc_stage[0][r][staged_group][STATE_INDEX(k, 0)]),
                       &bv[k * VEC]);
                unpack(*reinterpret_cast<const state_vec*>(&bc_stage[1][r][staged_group][STATE_INDEX(k, 0)]),
                       &cv[k * VEC]);
            }
#endif
        } else {
            if (BC_PREFETCH == 0) {
                FETCH_BC(r);
            } else if (r + BC_PREFETCH < BROWS) {
                FETCH_BC(r + BC_PREFETCH);
            }
#pragma unroll
            for (int k = 0; k < VPT; ++k) {
                unpack_raw(braw[r % BC_DEPTH][k], &bv[k * VEC]);
                unpack_raw(craw[r % BC_DEPTH][k], &cv[k * VEC]);
            }
        }
        // Every lane takes part in the shuffles, live row or not.
        const float dt = __shfl_sync(0xffffffffu, dt_own[r / TPR], group_base + r % TPR);
        const float dtx = __shfl_sync(0xffffffffu, dtx_own[r / TPR], group_base + r % TPR);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < EPT; ++j) {
            s[r][j] = ssm_exp2_ftz(dt * a2[j]) * s[r][j] + dtx * bv[j];
            sum += s[r][j] * cv[j];
        }
        sum = row_lanes_sum(sum);
        if (sub == r % TPR) acc_own[r / TPR] = sum;
        if (cache[r] >= 0) store_state_slice(a.state, ((long long)cache[r] * Din + d) * D_STATE, sub, s[r]);
    }
#undef FETCH_BC

    // Each lane finishes the rows it owns.
#pragma unroll
    for (int q = 0; q < SROWS; ++q) {
        const int r = q * TPR + sub;
        const long long i = i0 + r;
        if (!channel_live || r >= BROWS || i >= a.batch) continue;
        const long long c = cache_row(a, i);
        float y;
        if (c >= 0 && c < a.cache_rows) {
            y = (acc_own[q] + skip_own[q]) * gate_own[q];
        } else {
            y = stateless_output(c);  // padding: 0; past the cache: NaN, no write
        }
        static_cast<T*>(a.out)[i * Din + d] = from_f32<T>(y);
    }
#undef STATE_INDEX
}

SSM_DECODE_ENTRIES(mamba1_decode, Mamba1DecodeArgs)
