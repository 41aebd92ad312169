// Mamba-2 decode step (docs/DESIGN.md §1.3): one token per batch row, the state cache
// (cache_rows, H, P, N) read, updated and written back in place: f32, or f16 / bf16
// with DECODE_STATE_DTYPE (widened to f32 on load, rounded to nearest even on store;
// the arithmetic is f32 either way).
//
//   dt'  = clamp(softplus?(dt[i,h] + dt_bias[h]), dt_min, dt_max)
//   S    = exp(dt' A[h]) S + dt' x[i,h,:] B[i,g,:]^T          (P x N per (i, h))
//   y[p] = S[p,:] . C[i,g,:] + D x[p];   out = y * silu(z)    (z optional)
//
// The kernel is a streaming pass over the state: 2 * P * N * 4 bytes per (i, h)
// against a few hundred bytes of everything else, so it is built to move bytes:
//   * a state row of N floats is spread over TPR lanes, each holding VPT vectors of
//     VEC floats (16-byte accesses when N % 4 == 0), interleaved so that one warp
//     instruction touches TPR * VEC * 4 contiguous bytes (512 B for N = 128);
//   * each lane-slot updates ROWS rows whose loads are all issued before the first
//     use, so every thread has ROWS * VPT * 16 bytes in flight;
//   * B and C of the group are read once per warp into registers (VEC-element
//     accesses) and reused for every row the warp touches (the other warps of the
//     block hit them in L1);
//   * the per-head decay exp(dt' A) is one exp2 per block with log2(e) folded in;
//   * y[p] is reduced over the TPR lanes of its row with xor shuffles, and the
//     output epilogue (z, D, silu, the store) is spread over those lanes: lane j
//     finishes rows j, j + TPR, ... instead of one lane finishing every row.
// All index arithmetic is 64-bit.
//
// Compile-time defines (chosen by crates/mamba2-ssd/src/decode_cuda.rs):
//   D_STATE       N
//   VEC           floats per vector access: 4, 2 or 1 (largest that divides N)
//   TPR           lanes per state row: a power of two dividing 32
//   ROWS          state rows per lane-slot (unrolled)
//   WARPS         warps per block
//   STREAM_STATE  1: state loads and stores carry evict-first cache hints
//   MIN_BLOCKS    blocks per SM that ptxas must leave room for (caps registers)
//   DEPENDENT_LAUNCH 1: a programmatic dependent launch (common/decode_state.cuh)
//   DECODE_STATE_DTYPE  the state's storage: 0 f32 (default), 1 f16, 2 bf16; with a
//                 16-bit state VEC counts 16-bit elements (8: 16-byte accesses)

#if !defined(D_STATE) || !defined(VEC) || !defined(TPR) || !defined(ROWS) || !defined(WARPS)
#error "mamba2/decode.cu needs D_STATE, VEC, TPR, ROWS and WARPS defined"
#endif

// ---------------------------------------------------------------------------
// Element types, scalar math (the exact forms of ssm_core::math) and vector
// access to the state, shared with the other family's decode kernel.
// ---------------------------------------------------------------------------

#include "common/math.cuh"
#include "common/decode_state.cuh"

// ---------------------------------------------------------------------------
// Launch geometry.
// ---------------------------------------------------------------------------

// VPT, EPT, SLOTS (rows a warp covers side by side) and THREADS come from
// common/decode_state.cuh.
constexpr int ROWS_PER_WARP = SLOTS * ROWS;
constexpr int ROWS_PER_BLOCK = WARPS * ROWS_PER_WARP;
constexpr int SROWS = (ROWS + TPR - 1) / TPR;  // rows whose output a lane finishes

// Kernel arguments, passed by value. Mirrors `RawDecodeArgs` in
// crates/mamba2-ssd/src/decode_cuda.rs field by field (sizes asserted on both sides).
struct Mamba2DecodeArgs {
    const void* x;                              // (b, H, P)      T
    const void* dt;                             // (b, H)         T
    const float* A;                             // (H)
    const void* B;                              // (b, G, N)      T
    const void* C;                              // (b, G, N)      T
    const float* D;                             // (H) or (H, P), or null
    const void* z;                              // (b, H, P)      T, or null
    const float* dt_bias;                       // (H), or null
    const long long* state_batch_indices;       // (b), or null; negative = padding
    state_t* state;                             // (cache_rows, H, P, N)  state_t
    void* out;                                  // (b, H, P)      T
    long long batch;
    long long heads;
    long long head_dim;
    long long groups;
    long long cache_rows;
    float dt_min;
    float dt_max;
    int dt_softplus;
    int d_per_head_dim;                         // 1: D is (H, P); 0: D is (H)
};
static_assert(sizeof(Mamba2DecodeArgs) == 144, "Mamba2DecodeArgs layout changed: update decode_cuda.rs");

// One block updates ROWS_PER_BLOCK rows of the state of one (batch row i, head h).
// Blocks are ordered (i, h, row tile) with the tile fastest, so neighbouring blocks
// stream neighbouring memory.
template <typename T>
__device__ __forceinline__ void decode_step(const Mamba2DecodeArgs& a) {
    decode_allow_dependents();
    const long long P = a.head_dim;
    // 32-bit division: the grid (b * H * tiles blocks) fits in 31 bits (host check).
    const unsigned tiles = ((unsigned)P + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    const unsigned tile = blockIdx.x % tiles;
    const unsigned bh32 = blockIdx.x / tiles;  // i * H + h
    const long long bh = bh32;
    const long long h = bh32 % (unsigned)a.heads;
    const long long i = bh32 / (unsigned)a.heads;

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int slot = lane / TPR;  // which row of the warp's side-by-side rows
    const int sub = lane % TPR;   // which part of that row
    // Row r of this lane-slot is row0 + r * SLOTS: for a fixed r the warp's slots
    // cover SLOTS consecutive rows, so each access instruction is contiguous.
    const long long row0 = (long long)tile * ROWS_PER_BLOCK + warp * ROWS_PER_WARP + slot;

    const T* x = static_cast<const T*>(a.x) + bh * P;
    T* out = static_cast<T*>(a.out) + bh * P;

    // Every global load of the thread is issued before any arithmetic on a loaded
    // value: at b = 1 the step is one trip through HBM, and a use between two
    // loads puts a second trip in series. (v3 read dt, added the bias and ran the
    // softplus before loading A, and took the decay before the state loads: the
    // state left two HBM latencies after the block started; issue 16.)
    // Optional inputs are selects on the argument, not branches, so that nothing
    // splits this block of loads; the padding test comes after it, and that
    // branch keeps ptxas from scheduling the first use of a load among them.
    // (The state of a row with no cache row is not read: its loads are off.)
    decode_wait_for_predecessor();  // DEPENDENT_LAUNCH: nothing is read before this
    const long long cache_in = a.state_batch_indices ? a.state_batch_indices[i] : i;
    const bool has_state = cache_in >= 0 && cache_in < a.cache_rows;
    const long long cache = has_state ? cache_in : 0;
    state_t* S = a.state + (cache * a.heads + h) * P * D_STATE;
    float s[ROWS][EPT];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = row0 + (long long)r * SLOTS;
        load_state_slice(S, row * D_STATE, sub, has_state && row < P, s[r]);
    }
    // The head's group, after the state loads (only B and C need it). 32-bit
    // division: H < 2^31 (the grid check bounds b * H).
    const long long g = (unsigned)h / ((unsigned)a.heads / (unsigned)a.groups);
    const float dt_raw = to_f32(static_cast<const T*>(a.dt)[bh]);
    const float dt_bias = a.dt_bias ? a.dt_bias[h] : 0.0f;
    const float A_h = a.A[h];
    // B and C of this head's group, the lane's elements only.
    const T* Bg = static_cast<const T*>(a.B) + (i * a.groups + g) * D_STATE;
    const T* Cg = static_cast<const T*>(a.C) + (i * a.groups + g) * D_STATE;
    float bv[EPT], cv[EPT];
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
        const int n = lane_state_index(sub, k);
        load_inputs(Bg + n, &bv[k * VEC]);
        load_inputs(Cg + n, &cv[k * VEC]);
    }
    // x is needed by every lane of a row (dt * x enters the update). z and D are
    // needed only to finish the output, which lane `sub` does for the rows it owns
    // (r = q * TPR + sub) instead of one lane per row doing it for all.
    float xv[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = row0 + (long long)r * SLOTS;
        xv[r] = row < P ? to_f32(x[row]) : 0.0f;
    }
    float z_own[SROWS], d_own[SROWS];
#pragma unroll
    for (int q = 0; q < SROWS; ++q) {
        const int r = q * TPR + sub;
        const long long row = row0 + (long long)r * SLOTS;
        const bool owned = r < ROWS && row < P;
        z_own[q] = (owned && a.z) ? to_f32(static_cast<const T*>(a.z)[bh * P + row]) : 0.0f;
        // One load whatever D's shape (nested selects compiled to branches, which
        // put this load behind a use of the others); a row not owned is not finished.
        const long long d_at = a.d_per_head_dim ? h * P + row : h;
        d_own[q] = (owned && a.D) ? a.D[d_at] : 0.0f;
    }

    if (!has_state) {
        // Padding row: zero output, state untouched; past the cache: NaN, no write.
        const float fill = stateless_output(cache_in);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const long long row = row0 + (long long)r * SLOTS;
            if (sub == 0 && row < P) out[row] = from_f32<T>(fill);
        }
        return;
    }

    // Per-head step size and decay (every lane computes the same values).
    float dt = dt_raw;
    if (a.dt_bias) dt += dt_bias;
    if (a.dt_softplus) dt = ssm_softplus(dt);
    // Clamp as f32::clamp does: a NaN step stays NaN.
    dt = dt < a.dt_min ? a.dt_min : (dt > a.dt_max ? a.dt_max : dt);
    const float decay = ssm_exp2_ftz(dt * (A_h * SSM_LOG2E));

    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = row0 + (long long)r * SLOTS;
        const float dtx = dt * xv[r];
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < EPT; ++j) {
            s[r][j] = decay * s[r][j] + dtx * bv[j];
            sum += s[r][j] * cv[j];
        }
        acc[r] = row_lanes_sum(sum);  // every lane takes part, live row or not
        if (row < P) store_state_slice(S, row * D_STATE, sub, s[r]);
    }

    // Each lane finishes the rows it owns.
#pragma unroll
    for (int q = 0; q < SROWS; ++q) {
        const int r = q * TPR + sub;
        const long long row = row0 + (long long)r * SLOTS;
        if (r >= ROWS || row >= P) continue;
        float sum = 0.0f, xr = 0.0f;
#pragma unroll
        for (int rr = 0; rr < ROWS; ++rr) {
            if (rr == r) {  // a select chain: no run-time register index
                sum = acc[rr];
                xr = xv[rr];
            }
        }
        float y = sum + d_own[q] * xr;
        if (a.z) y *= ssm_silu(z_own[q]);
        out[row] = from_f32<T>(y);
    }
}

SSM_DECODE_ENTRIES(mamba2_decode, Mamba2DecodeArgs)
