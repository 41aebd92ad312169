// Mamba-1 fused selective scan, forward (docs/DESIGN.md §1.1, layouts §2).
//
// One block owns CPB channels of one sequence (a batch row, or one varlen
// sequence) and walks the sequence in time tiles of SCAN_TILE steps. Each
// channel's N states are split over SCAN_TPC lanes, SCAN_NPT states each (the
// lanes of one state slice side by side with SCAN_SLICE_MAJOR, so that a warp's
// B/C reads are broadcasts; else the lanes of one channel side by side); each
// lane carries SCAN_CPL channels (sharing the B/C values it reads); the states
// stay in registers across tiles. Per tile:
//
//   prep      every thread turns 8-step chunks of delta/u into (dt, dt*u) pairs
//             in shared memory (bias, softplus, masking), and B/C chunks into
//             f32 rows [t][n] shared by all channels of the block; then it
//             issues the global loads of the next tile, which fly during the scan.
//   scan      each lane steps its states through the tile: per state and step
//             one exp2 (MUFU, or an FMA polynomial for SCAN_EXP_POLY of every
//             4 * CPL * NPT, so that the MUFU and FMA pipes share the load), two
//             FMAs and a multiply; its partial C.h goes to shared memory, four
//             steps per 16-byte store.
//   epilogue  every thread sums the SCAN_TPC partials of its chunks, adds D*u,
//             gates with silu(z) and stores 8 steps as one 16-byte vector.
//
// Positions of the tile outside the sequence get dt = dt*u = 0: an exact
// identity step (2^0 = 1, h + 0), so a varlen sequence may start and end
// anywhere inside a tile with no branch in the scan loop.
//
// Training (SCAN_CKPT_BT > 0): the scan also stores the state entering every
// SCAN_CKPT_BT steps of a sequence into args.ckpt, in the layout and at the
// slots of the backward's checkpoint kernel (kernels/mamba1/scan_bwd.cu,
// mamba1_scan_bwd_ckpt), which the backward then skips. The states are the
// same bit for bit: the same dt (scan_softplus), dt*u, exp2 and FMA (the host
// refuses polynomial exponentials for training). SCAN_CKPT_STATIC (no varlen
// and SCAN_CKPT_BT dividing SCAN_TILE) places the stores at compile time;
// otherwise a per-lane countdown finds the steps.
//
// Compile-time configuration (-D): SCAN_DTYPE, SCAN_N, SCAN_TPC, SCAN_NPT, SCAN_CPL,
// SCAN_THREADS, SCAN_TILE, SCAN_MIN_BLOCKS, SCAN_EXP_POLY, SCAN_CKPT_BT,
// SCAN_CKPT_STATIC, and the 0/1 flags
// SCAN_ELEM_EXP_POLY (softplus/silu exponentials as polynomials),
// SCAN_SLICE_MAJOR (lane order: slice-major makes B/C reads warp-uniform),
// SCAN_HAS_BIAS, SCAN_SOFTPLUS, SCAN_HAS_D, SCAN_HAS_Z, SCAN_B_CONST,
// SCAN_C_CONST, SCAN_VEC_IO. The host (crates/mamba1-scan/src/cuda/) picks them
// and mirrors the shared-memory layout below.
#include "scan_io.cuh"

#if !defined(SCAN_N) || !defined(SCAN_TPC) || !defined(SCAN_NPT) || !defined(SCAN_THREADS) || \
    !defined(SCAN_TILE)
#error "SCAN_N, SCAN_TPC, SCAN_NPT, SCAN_THREADS and SCAN_TILE must be defined"
#endif
#ifndef SCAN_MIN_BLOCKS
#define SCAN_MIN_BLOCKS 1
#endif
#ifndef SCAN_EXP_POLY
#define SCAN_EXP_POLY 0
#endif

#ifndef SCAN_CPL
#define SCAN_CPL 1
#endif
#ifndef SCAN_CKPT_BT
#define SCAN_CKPT_BT 0
#endif
#ifndef SCAN_CKPT_STATIC
#define SCAN_CKPT_STATIC 0
#endif
#if SCAN_CKPT_STATIC && (SCAN_CKPT_BT <= 0 || SCAN_TILE % SCAN_CKPT_BT != 0)
#error "SCAN_CKPT_STATIC needs SCAN_CKPT_BT dividing SCAN_TILE"
#endif

#ifdef SSM_EMULATE
// Host forms of the few CUDA names below that the emulation header lacks.
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned atomicOr(unsigned* p, unsigned v) {
    const unsigned old = *p;
    *p = old | v;
    return old;
}
#if SCAN_VEC_IO
#error "the emulation runs the scalar path (SCAN_VEC_IO=0)"
#endif
#endif
#define SCAN_CPB (SCAN_THREADS / SCAN_TPC * SCAN_CPL)  // channels per block
#define SCAN_NP (SCAN_TPC * SCAN_NPT)          // N padded to the lanes' slices
#define SCAN_ROW_CHUNKS (SCAN_TILE / SCAN_CHUNK)  // chunks per channel row of a tile
#define SCAN_ELEM_CHUNKS (SCAN_CPB * SCAN_ROW_CHUNKS)
#define SCAN_ELEM_ITERS ((SCAN_ELEM_CHUNKS + SCAN_THREADS - 1) / SCAN_THREADS)
#define SCAN_BC_GROUPED ((SCAN_B_CONST ? 0 : 1) + (SCAN_C_CONST ? 0 : 1))
#define SCAN_BC_CHUNKS (SCAN_BC_GROUPED * SCAN_N * SCAN_ROW_CHUNKS)
#define SCAN_BC_ITERS ((SCAN_BC_CHUNKS + SCAN_THREADS - 1) / SCAN_THREADS)
// Row strides, padded by 16 bytes so that the rows a warp reads at once fall
// into different banks.
#define SCAN_SLOT_STRIDE (SCAN_TILE + 2)  // float2 (dt, dt*u) per step
#define SCAN_PART_STRIDE (SCAN_TILE + 4)  // float partial C.h per step

#ifndef SCAN_SLICE_MAJOR
#define SCAN_SLICE_MAJOR 0
#endif
// Row of the partial sums of (channel ch, state slice sl), in units of
// SCAN_PART_STRIDE. Slice-major puts the rows one warp writes at once next to
// each other (stride 36 words: conflict-free 16-byte stores).
#if SCAN_SLICE_MAJOR
#define SCAN_PART_ROW(ch, sl) ((sl) * SCAN_CPB + (ch))
#define SCAN_PART_CH_STEP 1
#else
#define SCAN_PART_ROW(ch, sl) ((ch) * SCAN_TPC + (sl))
#define SCAN_PART_CH_STEP SCAN_TPC
#endif

#if SCAN_TILE % SCAN_CHUNK != 0 || SCAN_TILE % 4 != 0
#error "SCAN_TILE must be a multiple of 8"
#endif
#if SCAN_THREADS % SCAN_TPC != 0 || 32 % SCAN_TPC != 0
#error "SCAN_TPC must be a power of two dividing 32 and SCAN_THREADS"
#endif
#if SCAN_NP < SCAN_N
#error "SCAN_TPC * SCAN_NPT must cover SCAN_N"
#endif
#if SCAN_EXP_POLY > 4 * SCAN_CPL * SCAN_NPT
#error "SCAN_EXP_POLY counts exponentials of a lane's 4-step group: at most 4 * SCAN_CPL * SCAN_NPT"
#endif

// SCAN_EXP_POLY of the 4 * CPL * NPT exponentials of a lane's 4-step group
// take the FMA polynomial, spread evenly over the group: exponential
// p = (step * CPL + channel) * NPT + state does when the running count
// p * k / (4 CPL NPT) steps up. A compile-time constant after unrolling.
__device__ __forceinline__ constexpr bool scan_poly_pair(int p) {
    return (p * SCAN_EXP_POLY) % (4 * SCAN_CPL * SCAN_NPT) < SCAN_EXP_POLY;
}

// A lane's SCAN_NPT consecutive floats of a B or C row in shared memory.
__device__ __forceinline__ void scan_load_row(float (&v)[SCAN_NPT], const float* row) {
#if SCAN_NPT % 4 == 0
#pragma unroll
    for (int i = 0; i < SCAN_NPT; i += 4) {
        const float4 f = *reinterpret_cast<const float4*>(row + i);
        v[i] = f.x;
        v[i + 1] = f.y;
        v[i + 2] = f.z;
        v[i + 3] = f.w;
    }
#elif SCAN_NPT % 2 == 0
#pragma unroll
    for (int i = 0; i < SCAN_NPT; i += 2) {
        const float2 f = *reinterpret_cast<const float2*>(row + i);
        v[i] = f.x;
        v[i + 1] = f.y;
    }
#else
#pragma unroll
    for (int i = 0; i < SCAN_NPT; ++i) v[i] = row[i];
#endif
}

#if SCAN_CKPT_BT > 0
// Training: store a lane's states h[c][0 .. NPT) of its channels sch0 + c
// (those inside the block's nch) at ck + c * stride, states slice*NPT.. of
// the slot (padded states past N are not stored: they would be the next
// slot's).
__device__ __forceinline__ void scan_put_ckpt(float* ck, long long stride,
                                              const float (&h)[SCAN_CPL][SCAN_NPT], int sch0,
                                              int slice, int nch) {
#pragma unroll
    for (int c = 0; c < SCAN_CPL; ++c) {
        if (sch0 + c >= nch) continue;
        float* p = ck + c * stride;
#if SCAN_NP == SCAN_N && SCAN_NPT % 4 == 0
        // Whole rows: the slot's offset is a multiple of N, the lane's of NPT.
#pragma unroll
        for (int i = 0; i < SCAN_NPT; i += 4)
            *reinterpret_cast<float4*>(p + i) = make_float4(h[c][i], h[c][i + 1], h[c][i + 2], h[c][i + 3]);
#elif SCAN_NP == SCAN_N && SCAN_NPT % 2 == 0
#pragma unroll
        for (int i = 0; i < SCAN_NPT; i += 2) {
            float2 v;
            v.x = h[c][i], v.y = h[c][i + 1];
            *reinterpret_cast<float2*>(p + i) = v;
        }
#else
#pragma unroll
        for (int i = 0; i < SCAN_NPT; ++i)
            if (slice * SCAN_NPT + i < SCAN_N) p[i] = h[c][i];
#endif
    }
}
#endif

// Bits of `ScanArgs::status` (mirrored in crates/mamba1-scan/src/cuda/launch.rs).
#define SCAN_STATUS_BAD_CU_SEQLENS 1u

// Kernel arguments, passed by value; mirrored by `ScanArgs` in
// crates/mamba1-scan/src/cuda/launch.rs (every field 8 bytes, no padding).
struct ScanArgs {
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
    scan_elem_t* out;              // (b, D_in, L)
    float* final_states;           // (seqs, D_in, N) or null
    unsigned int* status;          // one word: SCAN_STATUS_* bits of rejected inputs
    long long d_inner;
    long long seqlen;
    long long groups_b;            // 1 when B is constant
    long long groups_c;
    long long seg_channels;        // channels sharing one B group and one C group
    long long blocks_per_seg;      // ceil(seg_channels / CPB)
    long long blocks_per_seq;      // (D_in / seg_channels) * blocks_per_seg
    float* ckpt;                   // SCAN_CKPT_BT > 0: (rows, D_in, ckpt_slots, N), else unused
    long long ckpt_slots;          // checkpoint slots per (row, channel), as the backward's
};
static_assert(sizeof(ScanArgs) == 176, "ScanArgs layout changed: update launch.rs");

extern "C" __global__ void __launch_bounds__(SCAN_THREADS, SCAN_MIN_BLOCKS)
    mamba1_scan_fwd(const ScanArgs args) {
    SSM_DYNAMIC_SMEM(scan_smem);
    float2* slot = reinterpret_cast<float2*>(scan_smem);  // [CPB][SLOT_STRIDE]
    float* part = reinterpret_cast<float*>(scan_smem + sizeof(float2) * SCAN_CPB * SCAN_SLOT_STRIDE);
    // [CPB * TPC][PART_STRIDE], then the B and C rows [TILE][NP] of grouped B/C.
#if SCAN_BC_GROUPED > 0
    float* bc_rows = part + SCAN_CPB * SCAN_TPC * SCAN_PART_STRIDE;
#endif
#if !SCAN_B_CONST
    const float* Bs = bc_rows;
#endif
#if !SCAN_C_CONST
    const float* Cs = bc_rows + (SCAN_B_CONST ? 0 : SCAN_TILE * SCAN_NP);
#endif

    const int tid = threadIdx.x;
    const long long L = args.seqlen;
    const long long Din = args.d_inner;

    // ---- which sequence and channels this block owns
    const long long seq = blockIdx.x / args.blocks_per_seq;
    const long long cb = blockIdx.x - seq * args.blocks_per_seq;
    const long long seg = cb / args.blocks_per_seg;
    const long long first_in_seg = (cb - seg * args.blocks_per_seg) * SCAN_CPB;
    const long long c0 = seg * args.seg_channels + first_in_seg;
    const int nch = (int)min((long long)SCAN_CPB, args.seg_channels - first_in_seg);
    long long row, seq_lo, seq_hi;
    if (args.cu_seqlens != nullptr) {
        row = 0;
        seq_lo = args.cu_seqlens[seq];
        seq_hi = args.cu_seqlens[seq + 1];
        // Device-resident offsets are checked here, not trusted: a block whose
        // range is not inside the packed sequence (or, for the first and the
        // last sequence, does not start at 0 and end at L) reads and writes
        // nothing and raises the status word the host reads after the launch
        // (`ScanPlan::take_device_error`). Together the checks make the
        // offsets a partition of [0, L): each range lies in bounds and
        // consecutive ranges share their boundary element.
        const long long last = gridDim.x / args.blocks_per_seq - 1;
        if (!(0 <= seq_lo && seq_lo <= seq_hi && seq_hi <= L) || (seq == 0 && seq_lo != 0) ||
            (seq == last && seq_hi != L)) {
            if (threadIdx.x == 0) atomicOr(args.status, SCAN_STATUS_BAD_CU_SEQLENS);
            return;
        }
    } else {
        row = seq;
        seq_lo = 0;
        seq_hi = L;
    }
    const long long gb = c0 / (Din / args.groups_b);
    const long long gc = c0 / (Din / args.groups_c);
    (void)gb;
    (void)gc;

    // ---- scan lane: channels sch0 .. sch0 + CPL - 1 of the block, states
    // slice*NPT .. +NPT of each. A lane loads each B/C value once per step and
    // uses it for all its channels: shared memory delivers 128 bytes per clock
    // per SM, and at one channel per lane the B and C reads alone (8 bytes per
    // state and step) would cap the scan at the MUFU rate.
#if SCAN_SLICE_MAJOR
    // Lanes of one state slice are consecutive (a warp holds one slice of 32
    // channels): every B/C read of the scan is then the same address across
    // the warp, a broadcast.
    const int sch0 = (tid % (SCAN_THREADS / SCAN_TPC)) * SCAN_CPL;
    const int slice = tid / (SCAN_THREADS / SCAN_TPC);
#else
    // The SCAN_TPC lanes of a channel are adjacent.
    const int sch0 = (tid / SCAN_TPC) * SCAN_CPL;
    const int slice = tid % SCAN_TPC;
#endif
    const bool scan_active = sch0 < nch;
    float A2[SCAN_CPL][SCAN_NPT], h[SCAN_CPL][SCAN_NPT];
#if SCAN_B_CONST
    float Breg[SCAN_CPL][SCAN_NPT];
#endif
#if SCAN_C_CONST
    float Creg[SCAN_CPL][SCAN_NPT];
#endif
#pragma unroll
    for (int c = 0; c < SCAN_CPL; ++c) {
        const long long schan = c0 + sch0 + c;
#pragma unroll
        for (int i = 0; i < SCAN_NPT; ++i) {
            const int n = slice * SCAN_NPT + i;
            const bool real = sch0 + c < nch && n < SCAN_N;
            const long long an = schan * SCAN_N + n;
            // Padded states and channels get A = B = C = 0 and h = 0, and stay 0.
            A2[c][i] = real ? args.A[an] * SSM_LOG2E : 0.0f;
            h[c][i] = (real && args.initial_states != nullptr)
                          ? args.initial_states[(seq * Din + schan) * SCAN_N + n]
                          : 0.0f;
#if SCAN_B_CONST
            Breg[c][i] = real ? scan_elem_to_f32(args.B[an]) : 0.0f;
#endif
#if SCAN_C_CONST
            Creg[c][i] = real ? scan_elem_to_f32(args.C[an]) : 0.0f;
#endif
        }
    }

#if SCAN_CKPT_BT > 0
    // ---- training: where this lane's checkpoints go (scan_bwd.cu, bw_block:
    // sequence s's slots start at lo / BT + s for varlen, at 0 otherwise).
    // ck points at the slot of the next checkpoint of channel sch0 (channel
    // sch0 + c at + c * ck_stride); a null ckpt (a plain launch of a training
    // plan) stores nothing.
    const bool ck_on = args.ckpt != nullptr;
    const long long ck_stride = args.ckpt_slots * SCAN_N;
    float* ck = nullptr;
    if (ck_on) {
        const long long slot0 = args.cu_seqlens != nullptr ? seq_lo / SCAN_CKPT_BT + seq : 0;
        ck = args.ckpt + ((row * Din + c0 + sch0) * args.ckpt_slots + slot0) * SCAN_N +
             slice * SCAN_NPT;
    }
#if !SCAN_CKPT_STATIC
    // Steps until the next checkpoint: the first is the state entering seq_lo.
    int ck_wait = 0;
#endif
#endif

    // ---- element chunks of this thread (prep and epilogue): (channel, 8 steps)
    // Per-channel parameters of those chunks (0 for chunks past the block's channels).
#if SCAN_HAS_BIAS
    float ebias[SCAN_ELEM_ITERS];
#endif
#if SCAN_HAS_D
    float eskip[SCAN_ELEM_ITERS];
#endif
#pragma unroll
    for (int k = 0; k < SCAN_ELEM_ITERS; ++k) {
        const int j = tid + k * SCAN_THREADS;
        const int ech = j / SCAN_ROW_CHUNKS;
        const bool ok = j < SCAN_ELEM_CHUNKS && ech < nch;
        (void)ok;
#if SCAN_HAS_BIAS
        ebias[k] = ok ? args.delta_bias[c0 + ech] : 0.0f;
#endif
#if SCAN_HAS_D
        eskip[k] = ok ? args.D[c0 + ech] : 0.0f;
#endif
    }

#if SCAN_BC_GROUPED > 0 && SCAN_NP > SCAN_N
    // Padded state columns of the B/C rows are never loaded: zero them once.
    for (int i = tid; i < SCAN_BC_GROUPED * SCAN_TILE * SCAN_NP; i += SCAN_THREADS)
        if (i % SCAN_NP >= SCAN_N) bc_rows[i] = 0.0f;
#endif

    // ---- the tile pipeline: registers hold the next tile while this one runs
    ScanChunk nx_delta[SCAN_ELEM_ITERS], nx_u[SCAN_ELEM_ITERS];
#if SCAN_HAS_Z
    ScanChunk nx_z[SCAN_ELEM_ITERS];
#endif
#if SCAN_BC_GROUPED > 0
    ScanChunk nx_bc[SCAN_BC_ITERS];
#endif

    auto load_tile = [&](long long t0) {
#pragma unroll
        for (int k = 0; k < SCAN_ELEM_ITERS; ++k) {
            const int j = tid + k * SCAN_THREADS;
            const int ech = j / SCAN_ROW_CHUNKS;
            const long long pos0 = t0 + (long long)(j % SCAN_ROW_CHUNKS) * SCAN_CHUNK;
            if (j < SCAN_ELEM_CHUNKS && ech < nch) {
                const long long base = (row * Din + c0 + ech) * L;
                scan_load_chunk(nx_delta[k], args.delta + base, pos0, seq_lo, seq_hi);
                scan_load_chunk(nx_u[k], args.u + base, pos0, seq_lo, seq_hi);
#if SCAN_HAS_Z
                scan_load_chunk(nx_z[k], args.z + base, pos0, seq_lo, seq_hi);
#endif
            }
        }
#if SCAN_BC_GROUPED > 0
#pragma unroll
        for (int k = 0; k < SCAN_BC_ITERS; ++k) {
            const int j = tid + k * SCAN_THREADS;
            if (j < SCAN_BC_CHUNKS) {
                // j -> (tensor, chunk, n) with n fastest, so that the scatter into
                // the [t][n] rows hits consecutive banks.
                const int n = j % SCAN_N;
                const int rest = j / SCAN_N;
                const int rc = rest % SCAN_ROW_CHUNKS;
                const bool is_c = SCAN_B_CONST || (SCAN_C_CONST == 0 && rest >= SCAN_ROW_CHUNKS);
                const scan_elem_t* src =
                    is_c ? args.C + ((row * args.groups_c + gc) * SCAN_N + n) * L
                         : args.B + ((row * args.groups_b + gb) * SCAN_N + n) * L;
                scan_load_chunk(nx_bc[k], src, t0 + (long long)rc * SCAN_CHUNK, seq_lo, seq_hi);
            }
        }
#endif
    };

    // Tiles start at multiples of SCAN_TILE (aligned vector loads); an empty
    // sequence runs none and returns its initial state.
    const long long t_first = seq_lo - seq_lo % SCAN_TILE;
    const long long t_end = seq_lo < seq_hi ? seq_hi : t_first;
    if (t_first < t_end) load_tile(t_first);
#if SCAN_CKPT_BT > 0 && !SCAN_CKPT_STATIC
    ck_wait = (int)(seq_lo - t_first);
#endif

    for (long long t0 = t_first; t0 < t_end; t0 += SCAN_TILE) {
        ScanChunk cur_u[SCAN_ELEM_ITERS];
#if SCAN_HAS_Z
        ScanChunk cur_z[SCAN_ELEM_ITERS];
#endif
        __syncthreads();  // the previous tile's scan and epilogue are done with shared memory

        // ---- prep: (dt, dt*u) per step, B/C rows
#pragma unroll
        for (int k = 0; k < SCAN_ELEM_ITERS; ++k) {
            cur_u[k] = nx_u[k];
#if SCAN_HAS_Z
            cur_z[k] = nx_z[k];
#endif
            const int j = tid + k * SCAN_THREADS;
            const int ech = j / SCAN_ROW_CHUNKS;
            const int rc = j % SCAN_ROW_CHUNKS;
            if (j < SCAN_ELEM_CHUNKS && ech < nch) {
                const long long pos0 = t0 + (long long)rc * SCAN_CHUNK;
                float dt[SCAN_CHUNK], dtu[SCAN_CHUNK];
#pragma unroll
                for (int i = 0; i < SCAN_CHUNK; ++i) {
                    float d = scan_chunk_get(nx_delta[k], i);
#if SCAN_HAS_BIAS
                    d += ebias[k];
#endif
#if SCAN_SOFTPLUS
                    d = scan_softplus(d);
#endif
                    dt[i] = d;
                    dtu[i] = d * scan_chunk_get(cur_u[k], i);
                }
                // Steps outside the sequence become identity steps (only in the
                // first and last chunk of a sequence: a uniform branch elsewhere).
                if (pos0 < seq_lo || pos0 + SCAN_CHUNK > seq_hi) {
                    const int lo = (int)max(seq_lo - pos0, 0ll);
                    const int hi = (int)min(seq_hi - pos0, (long long)SCAN_CHUNK);
#pragma unroll
                    for (int i = 0; i < SCAN_CHUNK; ++i) {
                        const bool in_seq = i >= lo && i < hi;
                        dt[i] = in_seq ? dt[i] : 0.0f;
                        dtu[i] = in_seq ? dtu[i] : 0.0f;
                    }
                }
                float4* dst = reinterpret_cast<float4*>(slot + ech * SCAN_SLOT_STRIDE + rc * SCAN_CHUNK);
#pragma unroll
                for (int i = 0; i < SCAN_CHUNK; i += 2)
                    dst[i / 2] = make_float4(dt[i], dtu[i], dt[i + 1], dtu[i + 1]);
            }
        }
#if SCAN_BC_GROUPED > 0
#pragma unroll
        for (int k = 0; k < SCAN_BC_ITERS; ++k) {
            const int j = tid + k * SCAN_THREADS;
            if (j < SCAN_BC_CHUNKS) {
                const int n = j % SCAN_N;
                const int rest = j / SCAN_N;
                const int rc = rest % SCAN_ROW_CHUNKS;
                const int tensor = rest / SCAN_ROW_CHUNKS;  // 0: first grouped tensor, 1: second
                float* dst = bc_rows + tensor * (SCAN_TILE * SCAN_NP) + rc * SCAN_CHUNK * SCAN_NP + n;
#pragma unroll
                for (int i = 0; i < SCAN_CHUNK; ++i) dst[i * SCAN_NP] = scan_chunk_get(nx_bc[k], i);
            }
        }
#endif
        if (t0 + SCAN_TILE < t_end) load_tile(t0 + SCAN_TILE);
        __syncthreads();  // prep visible to the scan lanes

        // ---- scan: SCAN_TILE steps of this lane's states (fully unrolled, so
        // every shared-memory access is a base register plus an immediate)
        if (scan_active) {
#if SCAN_CKPT_BT > 0
            // Steps of this tile inside the sequence (a 32-bit bound for the stores).
            const int ck_lim = ck_on ? (int)min(seq_hi - t0, (long long)SCAN_TILE) : 0;
#endif
            const float2* my_slot = slot + sch0 * SCAN_SLOT_STRIDE;
            float* my_part = part + SCAN_PART_ROW(sch0, slice) * SCAN_PART_STRIDE;
#if !SCAN_B_CONST
            const float* my_B = Bs + slice * SCAN_NPT;
#endif
#if !SCAN_C_CONST
            const float* my_C = Cs + slice * SCAN_NPT;
#endif
#pragma unroll
            for (int t = 0; t < SCAN_TILE; t += 4) {
                float dts[SCAN_CPL][4], dtus[SCAN_CPL][4];
#pragma unroll
                for (int c = 0; c < SCAN_CPL; ++c) {
                    const float4 s01 = *reinterpret_cast<const float4*>(my_slot + c * SCAN_SLOT_STRIDE + t);
                    const float4 s23 = *reinterpret_cast<const float4*>(my_slot + c * SCAN_SLOT_STRIDE + t + 2);
                    dts[c][0] = s01.x; dtus[c][0] = s01.y;
                    dts[c][1] = s01.z; dtus[c][1] = s01.w;
                    dts[c][2] = s23.x; dtus[c][2] = s23.y;
                    dts[c][3] = s23.z; dtus[c][3] = s23.w;
                }
                float ys[SCAN_CPL][4];
#pragma unroll
                for (int q = 0; q < 4; ++q) {
#if !SCAN_B_CONST
                    float bv[SCAN_NPT];
                    scan_load_row(bv, my_B + (t + q) * SCAN_NP);
#endif
#if !SCAN_C_CONST
                    float cv[SCAN_NPT];
                    scan_load_row(cv, my_C + (t + q) * SCAN_NP);
#endif
#if SCAN_CKPT_BT > 0
                    // The state entering step t + q, if a checkpoint falls there.
#if SCAN_CKPT_STATIC
                    if ((t + q) % SCAN_CKPT_BT == 0 && t + q < ck_lim)
                        scan_put_ckpt(ck + (long long)((t + q) / SCAN_CKPT_BT) * SCAN_N, ck_stride,
                                      h, sch0, slice, nch);
#else
                    if (ck_wait == 0) {
                        if (t + q < ck_lim) {
                            scan_put_ckpt(ck, ck_stride, h, sch0, slice, nch);
                            ck += SCAN_N;
                        }
                        ck_wait = SCAN_CKPT_BT;
                    }
                    --ck_wait;
#endif
#endif
#pragma unroll
                    for (int c = 0; c < SCAN_CPL; ++c) {
                        const float dt = dts[c][q];
                        const float dtu = dtus[c][q];
                        float y = 0.0f;
#pragma unroll
                        for (int i = 0; i < SCAN_NPT; ++i) {
#if SCAN_B_CONST
                            const float b = Breg[c][i];
#else
                            const float b = bv[i];
#endif
#if SCAN_C_CONST
                            const float cc = Creg[c][i];
#else
                            const float cc = cv[i];
#endif
                            const float x = dt * A2[c][i];
                            const float dA = scan_poly_pair((q * SCAN_CPL + c) * SCAN_NPT + i)
                                                 ? scan_exp2_poly(x)
                                                 : ssm_exp2_ftz(x);
                            h[c][i] = fmaf(dA, h[c][i], b * dtu);
                            y = fmaf(cc, h[c][i], y);
                        }
                        ys[c][q] = y;
                    }
                }
#pragma unroll
                for (int c = 0; c < SCAN_CPL; ++c)
                    *reinterpret_cast<float4*>(my_part + c * SCAN_PART_CH_STEP * SCAN_PART_STRIDE + t) =
                        make_float4(ys[c][0], ys[c][1], ys[c][2], ys[c][3]);
            }
#if SCAN_CKPT_BT > 0 && SCAN_CKPT_STATIC
            ck += (long long)(SCAN_TILE / SCAN_CKPT_BT) * SCAN_N;
#endif
        }
        __syncthreads();  // partial sums complete

        // ---- epilogue: y = sum of partials + D*u, gate, store
#pragma unroll
        for (int k = 0; k < SCAN_ELEM_ITERS; ++k) {
            const int j = tid + k * SCAN_THREADS;
            const int ech = j / SCAN_ROW_CHUNKS;
            const int rc = j % SCAN_ROW_CHUNKS;
            if (j < SCAN_ELEM_CHUNKS && ech < nch) {
                float y[SCAN_CHUNK];
#pragma unroll
                for (int i = 0; i < SCAN_CHUNK; ++i) y[i] = 0.0f;
#pragma unroll
                for (int sl = 0; sl < SCAN_TPC; ++sl) {
                    const float4* src = reinterpret_cast<const float4*>(
                        part + SCAN_PART_ROW(ech, sl) * SCAN_PART_STRIDE + rc * SCAN_CHUNK);
#pragma unroll
                    for (int v = 0; v < SCAN_CHUNK / 4; ++v) {
                        const float4 p4 = src[v];
                        y[4 * v] += p4.x;
                        y[4 * v + 1] += p4.y;
                        y[4 * v + 2] += p4.z;
                        y[4 * v + 3] += p4.w;
                    }
                }
#pragma unroll
                for (int i = 0; i < SCAN_CHUNK; ++i) {
#if SCAN_HAS_D
                    y[i] = fmaf(eskip[k], scan_chunk_get(cur_u[k], i), y[i]);
#endif
#if SCAN_HAS_Z
                    y[i] *= scan_silu(scan_chunk_get(cur_z[k], i));
#endif
                }
                const long long base = (row * Din + c0 + ech) * L;
                scan_store_chunk(args.out + base, t0 + (long long)rc * SCAN_CHUNK, seq_lo, seq_hi, y);
            }
        }
    }

    // ---- final states
    if (args.final_states != nullptr) {
#pragma unroll
        for (int c = 0; c < SCAN_CPL; ++c) {
#pragma unroll
            for (int i = 0; i < SCAN_NPT; ++i) {
                const int n = slice * SCAN_NPT + i;
                if (sch0 + c < nch && n < SCAN_N)
                    args.final_states[(seq * Din + c0 + sch0 + c) * SCAN_N + n] = h[c][i];
            }
        }
    }
}
