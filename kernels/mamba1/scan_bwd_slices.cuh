// The slice-major sweep of the Mamba-1 scan backward (v5 of
// docs/kernels/mamba1-scan-bwd.md), included by kernels/mamba1/scan_bwd.cu,
// whose helpers, argument struct and other kernels it shares. Compiled only
// when the host selects it (SCAN_SL_NPT defined); it replaces `mamba1_scan_bwd`
// in the launch sequence and computes the same gradients.
//
// Why: the lanes sweep keeps the lanes of a channel in one warp, so every
// per-step value and every B/C row is read by a warp at several addresses
// (one shared-memory pass per quarter-warp) and the partial sums over states
// and over channels go through shared memory: about 27 wavefronts per warp and
// step, the measured limit (L1 86% busy). Here a warp is 32 channels of one
// slice of SCAN_SL_NPT states: the B/C rows are warp-uniform (one broadcast per
// 16 bytes), the per-channel values are one conflict-free row access, and the
// sums over the warp's channels for dB/dC are a butterfly of shuffles.
//
// Block: 32 channels (one per lane) x SCAN_SL_SLICES warps (warp w holds states
// w*NPT .. +NPT of every channel). Two roles per thread:
//   sweep     lane = channel, warp = slice: recompute the tile from its
//             checkpoint, reverse sweep, per-step partial sums;
//   staging   thread tid stages and finishes SCAN_SL_IPT consecutive steps
//             of channel tid / SLICES (runs of global memory in one vector
//             access each), reading the slices' partials back.
// Shared memory (floats), all [step][channel] planes with rows of
// SCAN_SL_RS = 36 floats, so that both the sweep's accesses (32 channels of
// one step) and the staging role's (IPT steps of 32 / SLICES channels) fall in
// distinct banks (RS = 4 mod 32; see the notes):
//   el    [2][6 planes][BT][RS]  dt, dt*u, gy, u, softplus', d_out*silu'(z)
//   bc    [2][BT][G*NP]          B/C rows, interleaved per state (as the lanes sweep)
//   part  [3][SLICES][BT][RS]    per slice: y, <lam, B>, <A log2e, w>
//   dbc   [SLICES][M][BT + 1]    the warp's dB/dC sums of the tile (M = G*NPT)
//
// mamba1_scan_bwd_ckpt_sm (v5.1) writes the checkpoints in the same geometry
// (lane = channel, warp = slice), in place of mamba1_scan_bwd_ckpt: the same
// recurrence per state in the same order, so the same bits (the emulated check
// compares the two), with B read as broadcasts and dt, dt*u as rows.
#ifdef SCAN_SL_NPT
#if !defined(SCAN_SL_SLICES) || !defined(SCAN_SL_KEEP) || !defined(SCAN_SL_MIN_BLOCKS)
#error "the slice-major sweep needs SCAN_SL_SLICES, SCAN_SL_KEEP and SCAN_SL_MIN_BLOCKS"
#endif
#define SCAN_SL_NP (SCAN_SL_SLICES * SCAN_SL_NPT)
#define SCAN_SL_THREADS (32 * SCAN_SL_SLICES)
#define SCAN_SL_IPT (SCAN_BT / SCAN_SL_SLICES)
#define SCAN_SL_RS 36
#define SCAN_SL_PLANE (SCAN_BT * SCAN_SL_RS)
#define SCAN_SL_PLANES 6
#define SCAN_SL_BCW (SCAN_BC_GROUPED * SCAN_SL_NP)
#define SCAN_SL_BC_FLOATS SCAN_R4(SCAN_BT * SCAN_SL_BCW)
#define SCAN_SL_M (SCAN_BC_GROUPED * SCAN_SL_NPT)
#define SCAN_SL_DBW (SCAN_BT + 1)
#define SCAN_SL_FLOATS                                                                  \
    (2 * SCAN_SL_PLANES * SCAN_SL_PLANE + 2 * SCAN_SL_BC_FLOATS +                       \
     3 * SCAN_SL_SLICES * SCAN_SL_PLANE + SCAN_R4(SCAN_SL_SLICES * SCAN_SL_M * SCAN_SL_DBW))
#if SCAN_BT % SCAN_SL_SLICES != 0 || SCAN_SL_IPT % 2 != 0
#error "the slice-major sweep needs SCAN_BT / SCAN_SL_SLICES even"
#endif
#if SCAN_SL_NP < SCAN_N || SCAN_SL_M > 32 || (SCAN_SL_NP - SCAN_SL_NPT) >= SCAN_N
#error "SCAN_SL_SLICES x SCAN_SL_NPT must cover SCAN_N with no empty slice, at most 32 sums"
#endif
#if defined(SCAN_SL_SMEM_BYTES) && SCAN_SL_SMEM_BYTES != SCAN_SL_FLOATS * 4
#error "SCAN_SL_SMEM_BYTES differs from the slice-major sweep's layout"
#endif
#define SCAN_SL_ROW_ITERS ((SCAN_SL_NP * SCAN_BT + SCAN_SL_THREADS - 1) / SCAN_SL_THREADS)
// The checkpoint kernel's shared memory: [2][dt, dt*u][BT][RS] and, grouped B,
// [2][BT][NP] rows of B.
#define SCAN_SL_CK_B_FLOATS (SCAN_B_CONST ? 0 : SCAN_R4(SCAN_BT * SCAN_SL_NP))
#define SCAN_SL_CKPT_FLOATS (2 * 2 * SCAN_SL_PLANE + 2 * SCAN_SL_CK_B_FLOATS)
#if defined(SCAN_SL_CKPT_SMEM_BYTES) && SCAN_SL_CKPT_SMEM_BYTES != SCAN_SL_CKPT_FLOATS * 4
#error "SCAN_SL_CKPT_SMEM_BYTES differs from the slice-major checkpoint kernel's layout"
#endif

struct alignas(8) bw_w2 {
    unsigned x, y;
};
struct alignas(16) bw_w4 {
    unsigned x, y, z, w;
};

// K consecutive elements of one row of global memory: one or two vector
// accesses when all K are in range and the address is aligned to the vector,
// element by element otherwise (positions past `valid` read as 0, are not
// written). f32 keeps floats, f16/bf16 the packed words (half the registers of
// a tile's prefetch).
template <int K>
struct BwRun {
#if SCAN_DTYPE == 0
    float f[K];
#else
    unsigned w[K / 2];
#endif
    static constexpr int BYTES = K * (int)sizeof(scan_elem_t);
    static constexpr int VEC = BYTES % 16 == 0 ? 16 : (BYTES % 8 == 0 ? 8 : 0);

    SCAN_DEV static bool vector_ok(const void* p, int valid) {
        return VEC > 0 && valid == K && reinterpret_cast<unsigned long long>(p) % (VEC > 0 ? VEC : 1) == 0;
    }

    SCAN_DEV void load(const scan_elem_t* p, int valid) {
        unsigned* words = raw();
        if (vector_ok(p, valid)) {
            if (VEC == 16) {
#pragma unroll
                for (int c = 0; c < BYTES / 16; ++c) {
                    const bw_w4 q = reinterpret_cast<const bw_w4*>(p)[c];
                    words[4 * c] = q.x, words[4 * c + 1] = q.y, words[4 * c + 2] = q.z,
                                   words[4 * c + 3] = q.w;
                }
            } else {
#pragma unroll
                for (int c = 0; c < BYTES / 8; ++c) {
                    const bw_w2 q = reinterpret_cast<const bw_w2*>(p)[c];
                    words[2 * c] = q.x, words[2 * c + 1] = q.y;
                }
            }
            return;
        }
#if SCAN_DTYPE == 0
#pragma unroll
        for (int i = 0; i < K; ++i) f[i] = i < valid ? p[i] : 0.0f;
#else
#pragma unroll
        for (int i = 0; i < K / 2; ++i) {
            const unsigned lo = 2 * i < valid ? (unsigned)p[2 * i] : 0u;
            const unsigned hi = 2 * i + 1 < valid ? (unsigned)p[2 * i + 1] : 0u;
            w[i] = lo | (hi << 16);
        }
#endif
    }

    SCAN_DEV float get(int i) const {
#if SCAN_DTYPE == 0
        return f[i];
#elif SCAN_DTYPE == 1
        return (i & 1) ? ssm_f16x2_hi(w[i / 2]) : ssm_f16x2_lo(w[i / 2]);
#else
        return (i & 1) ? ssm_bf16x2_hi(w[i / 2]) : ssm_bf16x2_lo(w[i / 2]);
#endif
    }

    // The run's storage as 32-bit words (f32: the floats' bits).
    SCAN_DEV unsigned* raw() {
#if SCAN_DTYPE == 0
        return reinterpret_cast<unsigned*>(f);
#else
        return w;
#endif
    }
};

// Store K values to one row of global memory: as BwRun reads.
template <int K>
SCAN_DEV void bw_store_run(scan_elem_t* p, const float (&v)[K], int valid) {
    if (BwRun<K>::vector_ok(p, valid)) {
        BwRun<K> r;
#if SCAN_DTYPE == 0
#pragma unroll
        for (int i = 0; i < K; ++i) r.f[i] = v[i];
#elif SCAN_DTYPE == 1
#pragma unroll
        for (int i = 0; i < K / 2; ++i) r.w[i] = ssm_pack_f16x2(v[2 * i], v[2 * i + 1]);
#else
#pragma unroll
        for (int i = 0; i < K / 2; ++i) r.w[i] = ssm_pack_bf16x2(v[2 * i], v[2 * i + 1]);
#endif
        const unsigned* words = r.raw();
        if (BwRun<K>::VEC == 16) {
#pragma unroll
            for (int c = 0; c < BwRun<K>::BYTES / 16; ++c) {
                bw_w4 q;
                q.x = words[4 * c], q.y = words[4 * c + 1], q.z = words[4 * c + 2],
                q.w = words[4 * c + 3];
                reinterpret_cast<bw_w4*>(p)[c] = q;
            }
        } else {
#pragma unroll
            for (int c = 0; c < BwRun<K>::BYTES / 8; ++c) {
                bw_w2 q;
                q.x = words[2 * c], q.y = words[2 * c + 1];
                reinterpret_cast<bw_w2*>(p)[c] = q;
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < K; ++i)
        if (i < valid) bw_store(p, i, v[i]);
}

// The sum of each of M values over the warp's 32 lanes, by a butterfly in a
// fixed order: each of log2(MP) halving steps (MP = M rounded up to a power of
// two) sends half of the remaining values across and adds the other half, the
// rest are plain exchanges. Lane l ends with the sum of value l / (32 / MP).
// (Recursion over the step's offset O, so that every index is a constant.)
template <int MP, int O>
SCAN_DEV void bw_butterfly(float (&w)[MP], int lane) {
    if constexpr (O >= 1) {
        constexpr int count = MP * O / 16;  // values left before this step
        if constexpr (count > 1) {
            const bool up = (lane & O) != 0;
#pragma unroll
            for (int j = 0; j < count / 2; ++j) {
                const float send = up ? w[j] : w[j + count / 2];
                const float keep = up ? w[j + count / 2] : w[j];
                w[j] = keep + __shfl_xor_sync(0xffffffffu, send, O);
            }
        } else {
            w[0] += __shfl_xor_sync(0xffffffffu, w[0], O);
        }
        bw_butterfly<MP, O / 2>(w, lane);
    }
}

template <int M>
struct BwPow2AtLeast {
    static constexpr int value = M <= 1 ? 1 : M <= 2 ? 2 : M <= 4 ? 4 : M <= 8 ? 8 : M <= 16 ? 16 : 32;
};

template <int M>
SCAN_DEV float bw_warp_sums(const float (&v)[M]) {
    constexpr int MP = BwPow2AtLeast<M>::value;
    float w[MP];
#pragma unroll
    for (int i = 0; i < MP; ++i) w[i] = i < M ? v[i] : 0.0f;
    bw_butterfly<MP, 16>(w, threadIdx.x & 31);
    return w[0];
}

// The two roles of a thread of the slice-major kernels: in the sweep lane =
// channel and warp = slice; in the staging (and the epilogue) steps t0 .. t0 +
// IPT - 1 of channel ech, so that its global accesses are runs.
struct SlRoles {
    int lane, slice, ech, t0;
    long long chan, echan;
    bool live, elive;
};
SCAN_DEV SlRoles sl_roles(const BwBlock& blk) {
    SlRoles r;
    const int tid = threadIdx.x;
    r.lane = tid & 31, r.slice = tid >> 5;
    r.chan = blk.c0 + r.lane;
    r.live = r.lane < blk.nch;
    r.ech = tid / SCAN_SL_SLICES;
    r.t0 = (tid % SCAN_SL_SLICES) * SCAN_SL_IPT;
    r.elive = r.ech < blk.nch;
    r.echan = blk.c0 + r.ech;
    return r;
}
// The staging run of the tile at `start`: how many of its steps lie in the
// sequence (0 for a channel past the block's), and at `at` the index of its
// first element in the (row, channel, position) tensors (0 when none).
SCAN_DEV int sl_run(const ScanBwdArgs& a, const BwBlock& blk, const SlRoles& r, long long start,
                    long long& at) {
    const long long pos = start + r.t0;
    const long long left = blk.hi - pos;
    const int valid = !r.elive || left <= 0 ? 0 : (left < SCAN_SL_IPT ? (int)left : SCAN_SL_IPT);
    at = valid > 0 ? (blk.row * a.d_inner + r.echan) * a.seqlen + pos : 0;
    return valid;
}

extern "C" __global__ void __launch_bounds__(SCAN_SL_THREADS, SCAN_SL_MIN_BLOCKS)
    mamba1_scan_bwd_sm(const ScanBwdArgs args) {
    SSM_DYNAMIC_SMEM(scan_smem);
    float* s_el = reinterpret_cast<float*>(scan_smem);         // [2][PLANES][BT][RS]
    float* s_bc = s_el + 2 * SCAN_SL_PLANES * SCAN_SL_PLANE;    // [2][BT][BCW]
    float* s_part = s_bc + 2 * SCAN_SL_BC_FLOATS;               // [3][SLICES][BT][RS]
#if SCAN_BC_GROUPED > 0
    float* s_dbc = s_part + 3 * SCAN_SL_SLICES * SCAN_SL_PLANE;  // [SLICES][M][DBW]
    constexpr int OFF_C = SCAN_B_CONST ? 0 : 1;  // C's place in a state's pair
    constexpr int K = SCAN_SL_NPT * SCAN_BC_GROUPED;
#endif
    // Planes of el.
    constexpr int P_DT = 0, P_DTU = 1, P_GY = 2, P_U = 3, P_SP = 4, P_GZ = 5;

    const long long L = args.seqlen, Din = args.d_inner;
    const BwBlock blk = bw_block_of<32>(args, blockIdx.x);
    const SlRoles roles = sl_roles(blk);
    const int lane = roles.lane, slice = roles.slice, ech = roles.ech, t0 = roles.t0;
    const long long chan = roles.chan;
    const bool live = roles.live;

    float A2[SCAN_SL_NPT], lam[SCAN_SL_NPT], dA[SCAN_SL_NPT];
#if SCAN_B_CONST
    float Breg[SCAN_SL_NPT], dBc[SCAN_SL_NPT];
#endif
#if SCAN_C_CONST
    float Creg[SCAN_SL_NPT], dCc[SCAN_SL_NPT];
#endif
#pragma unroll
    for (int i = 0; i < SCAN_SL_NPT; ++i) {
        const int n = slice * SCAN_SL_NPT + i;
        const bool real = live && n < SCAN_N;
        const long long an = chan * SCAN_N + n;
        A2[i] = (real ? args.A[an] : 0.0f) * SSM_LOG2E;
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
#if SCAN_HAS_D
    const float eD = roles.elive ? args.D[roles.echan] : 0.0f;
    float sumD = 0.0f;  // over this thread's steps, tile by tile
#endif
#if SCAN_HAS_BIAS
    const float ebias = roles.elive ? args.delta_bias[roles.echan] : 0.0f;
    float sumBias = 0.0f;
#endif

    const long long len = blk.hi - blk.lo;
    const long long tiles = (len + SCAN_BT - 1) / SCAN_BT;
    const float* ck = args.ckpt + ((blk.row * Din + chan) * args.ckpt_slots + blk.slot0) * SCAN_N +
                      slice * SCAN_SL_NPT;
#if !SCAN_B_CONST
    const scan_elem_t* Bsrc = args.B + ((blk.row * args.groups_b + blk.gb) * SCAN_N) * L;
    float qB[SCAN_SL_ROW_ITERS];
#endif
#if !SCAN_C_CONST
    const scan_elem_t* Csrc = args.C + ((blk.row * args.groups_c + blk.gc) * SCAN_N) * L;
    float qC[SCAN_SL_ROW_ITERS];
#endif
    BwRun<SCAN_SL_IPT> qx, qu, qg;
#if SCAN_HAS_Z
    BwRun<SCAN_SL_IPT> qz;
#endif
    int qvalid = 0;  // the fetched run's steps inside the sequence
    float qh[SCAN_SL_NPT], h[SCAN_SL_NPT];
    int evalid = 0;  // ... of the staged tile

    auto fetch = [&](long long start, long long k) {
        long long at;
        qvalid = sl_run(args, blk, roles, start, at);  // qvalid = 0 reads nothing
        qx.load(args.delta + at, qvalid);
        qu.load(args.u + at, qvalid);
        qg.load(args.d_out + at, qvalid);
#if SCAN_HAS_Z
        qz.load(args.z + at, qvalid);
#endif
#if !SCAN_B_CONST
        bw_fetch_rows<SCAN_SL_ROW_ITERS, SCAN_SL_NP, SCAN_SL_THREADS>(qB, Bsrc, start, blk.hi, L);
#endif
#if !SCAN_C_CONST
        bw_fetch_rows<SCAN_SL_ROW_ITERS, SCAN_SL_NP, SCAN_SL_THREADS>(qC, Csrc, start, blk.hi, L);
#endif
#pragma unroll
        for (int i = 0; i < SCAN_SL_NPT; ++i) {
            const int n = slice * SCAN_SL_NPT + i;
            qh[i] = (live && n < SCAN_N) ? ck[k * SCAN_N + i] : 0.0f;
        }
    };
    auto stage = [&](int buf) {
        float* el = s_el + buf * SCAN_SL_PLANES * SCAN_SL_PLANE + ech;
        evalid = qvalid;
#pragma unroll
        for (int i = 0; i < SCAN_SL_IPT; ++i) {
            const int t = t0 + i;
            float dt = 0.0f, u = 0.0f, gy = 0.0f, sp = 0.0f, gz = 0.0f;
            if (i < qvalid) {
                float x = qx.get(i);
#if SCAN_HAS_BIAS
                x += ebias;
#endif
                dt = bw_dt(x);
                u = qu.get(i);
                const float g = qg.get(i);
#if SCAN_HAS_Z
                const float z = qz.get(i);
                const float sz = bw_sigmoid(z);  // scan_silu(z) is z * this, bit for bit
                gy = g * (z * sz);
                gz = g * (sz * (1.0f + z * (1.0f - sz)));
#else
                gy = g;
#endif
#if SCAN_SOFTPLUS
                sp = x > 20.0f ? 1.0f : bw_sigmoid(x);  // the forward takes dt = x there
#endif
                (void)x;
            }
            el[P_DT * SCAN_SL_PLANE + t * SCAN_SL_RS] = dt;
            el[P_DTU * SCAN_SL_PLANE + t * SCAN_SL_RS] = dt * u;
            el[P_GY * SCAN_SL_PLANE + t * SCAN_SL_RS] = gy;
            el[P_U * SCAN_SL_PLANE + t * SCAN_SL_RS] = u;
            el[P_SP * SCAN_SL_PLANE + t * SCAN_SL_RS] = sp;
            el[P_GZ * SCAN_SL_PLANE + t * SCAN_SL_RS] = gz;
        }
#if !SCAN_B_CONST
        bw_put_rows<SCAN_SL_ROW_ITERS, SCAN_SL_NP, SCAN_SL_THREADS>(
            s_bc + buf * SCAN_SL_BC_FLOATS, SCAN_SL_BCW, SCAN_BC_GROUPED, qB);
#endif
#if !SCAN_C_CONST
        bw_put_rows<SCAN_SL_ROW_ITERS, SCAN_SL_NP, SCAN_SL_THREADS>(
            s_bc + buf * SCAN_SL_BC_FLOATS + OFF_C, SCAN_SL_BCW, SCAN_BC_GROUPED, qC);
#endif
#pragma unroll
        for (int i = 0; i < SCAN_SL_NPT; ++i) h[i] = qh[i];
    };

    // State i's B and C at a step: from the step's staged row r (grouped) or
    // the constants.
    auto pick_bc = [&](const float* r, int i, float& b, float& c) {
#if SCAN_B_CONST
        b = Breg[i];
#else
        b = r[i * SCAN_BC_GROUPED];
#endif
#if SCAN_C_CONST
        c = Creg[i];
#else
        c = r[i * SCAN_BC_GROUPED + OFF_C];
#endif
        (void)r;
    };
#if SCAN_BC_GROUPED > 0
#define SCAN_SL_ROW r
#else
#define SCAN_SL_ROW nullptr
#endif

    if (tiles > 0) {
        fetch(blk.lo + (tiles - 1) * SCAN_BT, tiles - 1);
        stage((int)((tiles - 1) & 1));
    }
    for (long long k = tiles - 1; k >= 0; --k) {
        const int buf = (int)(k & 1);
        const long long start = blk.lo + k * SCAN_BT;
        __syncthreads();  // A: the tile is staged; the last tile's readers are done
        if (k > 0) fetch(start - SCAN_BT, k - 1);  // in flight during this tile

        const float* el = s_el + buf * SCAN_SL_PLANES * SCAN_SL_PLANE + lane;  // this channel
#if SCAN_BC_GROUPED > 0
        const float* bc = s_bc + buf * SCAN_SL_BC_FLOATS + slice * K;  // warp-uniform
#endif
        float* prow = s_part + slice * SCAN_SL_PLANE + lane;
        // ---- recompute the tile: h_{t-1} (and, kept, the decay a_t) of every step.
        float hp[SCAN_BT][SCAN_SL_NPT];
#if SCAN_SL_KEEP
        float av[SCAN_BT][SCAN_SL_NPT];
#endif
#pragma unroll
        for (int t = 0; t < SCAN_BT; ++t) {
            const float dt = el[P_DT * SCAN_SL_PLANE + t * SCAN_SL_RS];
            const float dtu = el[P_DTU * SCAN_SL_PLANE + t * SCAN_SL_RS];
#if SCAN_BC_GROUPED > 0
            float r[K];
            bw_get<K>(r, bc + t * SCAN_SL_BCW);
#endif
#if SCAN_HAS_Z
            float y = 0.0f;  // needed for dz only
#endif
#pragma unroll
            for (int i = 0; i < SCAN_SL_NPT; ++i) {
                float b, c;
                pick_bc(SCAN_SL_ROW, i, b, c);
                hp[t][i] = h[i];
                const float a = ssm_exp2_ftz(dt * A2[i]);
#if SCAN_SL_KEEP
                av[t][i] = a;
#endif
                h[i] = fmaf(a, h[i], dtu * b);
#if SCAN_HAS_Z
                y = fmaf(c, h[i], y);
#endif
                (void)c;
            }
#if SCAN_HAS_Z
            prow[t * SCAN_SL_RS] = y;
#endif
        }

        // ---- reverse sweep over the tile; h holds h_t on entry to step t.
#pragma unroll
        for (int t = SCAN_BT - 1; t >= 0; --t) {
            const float dt = el[P_DT * SCAN_SL_PLANE + t * SCAN_SL_RS];
            const float dtu = el[P_DTU * SCAN_SL_PLANE + t * SCAN_SL_RS];
            const float gy = el[P_GY * SCAN_SL_PLANE + t * SCAN_SL_RS];
#if SCAN_BC_GROUPED > 0
            float r[K];
            bw_get<K>(r, bc + t * SCAN_SL_BCW);
            float v[SCAN_SL_M];  // this channel's terms of the grouped dB (lam dt u), dC (h gy)
#endif
            float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
            for (int i = 0; i < SCAN_SL_NPT; ++i) {
                float b, c;
                pick_bc(SCAN_SL_ROW, i, b, c);
                const float ht = (t == SCAN_BT - 1) ? h[i] : hp[t + 1][i];
                lam[i] = fmaf(c, gy, lam[i]);  // now dL/dh_t
#if !SCAN_B_CONST
                v[i] = lam[i] * dtu;
#else
                dBc[i] = fmaf(lam[i], dtu, dBc[i]);
#endif
#if !SCAN_C_CONST
                v[(SCAN_BC_GROUPED - 1) * SCAN_SL_NPT + i] = ht * gy;
#else
                dCc[i] = fmaf(gy, ht, dCc[i]);
#endif
                s1 = fmaf(lam[i], b, s1);
#if SCAN_SL_KEEP
                lam[i] *= av[t][i];  // dL/dh_{t-1} through h_t
#else
                lam[i] *= ssm_exp2_ftz(dt * A2[i]);  // the recompute's decay, bit for bit
#endif
                const float w = lam[i] * hp[t][i];
                s2 = fmaf(A2[i], w, s2);
                dA[i] = fmaf(dt, w, dA[i]);
            }
            prow[SCAN_SL_SLICES * SCAN_SL_PLANE + t * SCAN_SL_RS] = s1;
            prow[2 * SCAN_SL_SLICES * SCAN_SL_PLANE + t * SCAN_SL_RS] = s2;
#if SCAN_BC_GROUPED > 0
            {
                constexpr int MP = BwPow2AtLeast<SCAN_SL_M>::value;
                const float sum = bw_warp_sums<SCAN_SL_M>(v);
                const int idx = lane / (32 / MP);
                if (lane % (32 / MP) == 0 && idx < SCAN_SL_M)
                    s_dbc[(slice * SCAN_SL_M + idx) * SCAN_SL_DBW + t] = sum;
            }
#endif
        }
        __syncthreads();  // B: the slices' partials are in place

        // ---- epilogue of this thread's run: the slices' partials added in slice
        // order; du, ddelta, dz written as runs.
        {
            const float* eel = s_el + buf * SCAN_SL_PLANES * SCAN_SL_PLANE + ech;
            const float* epart = s_part + ech;
            float du[SCAN_SL_IPT], ddl[SCAN_SL_IPT];
#if SCAN_HAS_Z
            float dz[SCAN_SL_IPT];
#endif
#pragma unroll
            for (int i = 0; i < SCAN_SL_IPT; ++i) {
                const int t = t0 + i;
                float S1 = 0.0f, S2 = 0.0f;
#if SCAN_HAS_Z
                float y = 0.0f;
#endif
#pragma unroll
                for (int s = 0; s < SCAN_SL_SLICES; ++s) {
#if SCAN_HAS_Z
                    y += epart[s * SCAN_SL_PLANE + t * SCAN_SL_RS];
#endif
                    S1 += epart[(SCAN_SL_SLICES + s) * SCAN_SL_PLANE + t * SCAN_SL_RS];
                    S2 += epart[(2 * SCAN_SL_SLICES + s) * SCAN_SL_PLANE + t * SCAN_SL_RS];
                }
                S2 *= 0.6931471805599453f;  // ln 2: the sum was over A log2(e)
                const float dt = eel[P_DT * SCAN_SL_PLANE + t * SCAN_SL_RS];
                const float gy = eel[P_GY * SCAN_SL_PLANE + t * SCAN_SL_RS];
                const float u = eel[P_U * SCAN_SL_PLANE + t * SCAN_SL_RS];
                const bool in = i < evalid;
                (void)gy, (void)in;
#if SCAN_HAS_D
                du[i] = fmaf(gy, eD, dt * S1);
                if (in) sumD = fmaf(gy, u, sumD);
#else
                du[i] = dt * S1;
#endif
                const float ddt = fmaf(S1, u, S2);
#if SCAN_SOFTPLUS
                ddl[i] = ddt * eel[P_SP * SCAN_SL_PLANE + t * SCAN_SL_RS];
#else
                ddl[i] = ddt;
#endif
#if SCAN_HAS_BIAS
                if (in) sumBias += ddl[i];
#endif
#if SCAN_HAS_Z
#if SCAN_HAS_D
                y = fmaf(eD, u, y);
#endif
                dz[i] = eel[P_GZ * SCAN_SL_PLANE + t * SCAN_SL_RS] * y;
#endif
            }
            if (evalid > 0) {
                const long long at = (blk.row * Din + roles.echan) * L + start + t0;
                bw_store_run<SCAN_SL_IPT>(args.du + at, du, evalid);
                bw_store_run<SCAN_SL_IPT>(args.ddelta + at, ddl, evalid);
#if SCAN_HAS_Z
                bw_store_run<SCAN_SL_IPT>(args.dz + at, dz, evalid);
#endif
            }
        }
        // ---- grouped dB/dC: this warp's sums over its 32 channels, one row of
        // BT positions per (tensor, state).
#if SCAN_BC_GROUPED > 0
        {
            const long long base = (blk.row * args.blocks_per_seq + blk.cb) * SCAN_N;
#pragma unroll
            for (int e = lane; e < SCAN_SL_M * SCAN_BT; e += 32) {
                const int vi = e / SCAN_BT, t = e - vi * SCAN_BT;
                const int tensor = vi / SCAN_SL_NPT;  // index among the grouped tensors
                const int n = slice * SCAN_SL_NPT + (vi - tensor * SCAN_SL_NPT);
                const long long pos = start + t;
                const bool is_b = !SCAN_B_CONST && tensor == 0;
                float* part = is_b ? args.part_b : args.part_c;
                if (n < SCAN_N && pos < blk.hi)
                    part[(base + n) * L + pos] = s_dbc[(slice * SCAN_SL_M + vi) * SCAN_SL_DBW + t];
            }
        }
#endif
        if (k > 0) stage(buf ^ 1);
    }

#undef SCAN_SL_ROW
    // ---- per-(sequence, channel) results.
    float* pp = args.part_params + (blk.seq * Din + chan) * SCAN_PARAMS;
#pragma unroll
    for (int i = 0; i < SCAN_SL_NPT; ++i) {
        const int n = slice * SCAN_SL_NPT + i;
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
    // dD and ddelta_bias: each thread's sums over its steps, added over a
    // channel's runs in step order (in the part region, free after the last tile).
#if SCAN_HAS_D || SCAN_HAS_BIAS
    float* s_sum = s_part;  // [32][SLICES]
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
        __syncthreads();
        float v = 0.0f;
#if SCAN_HAS_D
        if (pass == 0) v = sumD;
#endif
#if SCAN_HAS_BIAS
        if (pass == 1) v = sumBias;
#endif
        const int tid = threadIdx.x;
        s_sum[tid] = v;  // = [ech][run]
        __syncthreads();
        if (tid < blk.nch) {
            float s = 0.0f;
            for (int r = 0; r < SCAN_SL_SLICES; ++r) s += s_sum[tid * SCAN_SL_SLICES + r];
            args.part_params[(blk.seq * Din + blk.c0 + tid) * SCAN_PARAMS + 3 * SCAN_N + pass] = s;
        }
    }
#endif
}

// ---- the checkpoints, slice-major (v5.1). One barrier per tile, as
// mamba1_scan_bwd_ckpt: tile k+1 is staged into the other buffer after tile k's
// steps, its loads in flight during them.
extern "C" __global__ void __launch_bounds__(SCAN_SL_THREADS, 8)
    mamba1_scan_bwd_ckpt_sm(const ScanBwdArgs args) {
    SSM_DYNAMIC_SMEM(scan_smem);
    float* s_el = reinterpret_cast<float*>(scan_smem);  // [2][2][BT][RS]: dt, dt*u
#if !SCAN_B_CONST
    float* s_B = s_el + 4 * SCAN_SL_PLANE;  // [2][BT][NP]
#endif
    const long long L = args.seqlen, Din = args.d_inner;
    (void)L;  // read only by the grouped-B row fetch
    const BwBlock blk = bw_block_of<32>(args, blockIdx.x);
    const SlRoles roles = sl_roles(blk);
    const int lane = roles.lane, slice = roles.slice, ech = roles.ech, t0 = roles.t0;
    const long long chan = roles.chan;
    const bool live = roles.live;
#if SCAN_HAS_BIAS
    const float ebias = roles.elive ? args.delta_bias[roles.echan] : 0.0f;
#endif

    float A2[SCAN_SL_NPT], h[SCAN_SL_NPT];
#if SCAN_B_CONST
    float Breg[SCAN_SL_NPT];
#endif
#pragma unroll
    for (int i = 0; i < SCAN_SL_NPT; ++i) {
        const int n = slice * SCAN_SL_NPT + i;
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
    float* ck = args.ckpt + ((blk.row * Din + chan) * args.ckpt_slots + blk.slot0) * SCAN_N +
                slice * SCAN_SL_NPT;
#if !SCAN_B_CONST
    const scan_elem_t* Bsrc = args.B + ((blk.row * args.groups_b + blk.gb) * SCAN_N) * L;
    float qB[SCAN_SL_ROW_ITERS];
#endif
    BwRun<SCAN_SL_IPT> qx, qu;
    int qvalid = 0;
    auto fetch = [&](long long start) {
        long long at;
        qvalid = sl_run(args, blk, roles, start, at);
        qx.load(args.delta + at, qvalid);
        qu.load(args.u + at, qvalid);
#if !SCAN_B_CONST
        bw_fetch_rows<SCAN_SL_ROW_ITERS, SCAN_SL_NP, SCAN_SL_THREADS>(qB, Bsrc, start, blk.hi, L);
#endif
    };
    auto stage = [&](int buf) {
        float* el = s_el + buf * 2 * SCAN_SL_PLANE + ech;
#pragma unroll
        for (int i = 0; i < SCAN_SL_IPT; ++i) {
            float dt = 0.0f, dtu = 0.0f;
            if (i < qvalid) {
                float x = qx.get(i);
#if SCAN_HAS_BIAS
                x += ebias;
#endif
                dt = bw_dt(x);
                dtu = dt * qu.get(i);
            }
            el[(t0 + i) * SCAN_SL_RS] = dt;
            el[SCAN_SL_PLANE + (t0 + i) * SCAN_SL_RS] = dtu;
        }
#if !SCAN_B_CONST
        bw_put_rows<SCAN_SL_ROW_ITERS, SCAN_SL_NP, SCAN_SL_THREADS>(s_B + buf * SCAN_SL_CK_B_FLOATS,
                                                                    SCAN_SL_NP, 1, qB);
#endif
    };
    if (tiles > 0) {
        fetch(blk.lo);
        stage(0);
    }
    for (long long k = 0; k < tiles; ++k) {
        const int buf = (int)(k & 1);
        const long long start = blk.lo + k * SCAN_BT;
        __syncthreads();  // tile k staged; tile k-1's reads of the other buffer done
        if (k + 1 < tiles) fetch(start + SCAN_BT);
        if (live) {
            if (SCAN_SL_NP == SCAN_N) {
                // Whole rows: the slice's states are contiguous and aligned to
                // NPT floats (the slot's offset is a multiple of N = SLICES NPT).
                bw_put<SCAN_SL_NPT>(ck + k * SCAN_N, h);
            } else {
#pragma unroll
                for (int i = 0; i < SCAN_SL_NPT; ++i)
                    if (slice * SCAN_SL_NPT + i < SCAN_N) ck[k * SCAN_N + i] = h[i];
            }
        }
        const float* el = s_el + buf * 2 * SCAN_SL_PLANE + lane;
#if !SCAN_B_CONST
        const float* brow = s_B + buf * SCAN_SL_CK_B_FLOATS + slice * SCAN_SL_NPT;  // warp-uniform
#endif
#pragma unroll
        for (int t = 0; t < SCAN_BT; ++t) {
            const float dt = el[t * SCAN_SL_RS], dtu = el[SCAN_SL_PLANE + t * SCAN_SL_RS];
#if SCAN_B_CONST
            const float* b = Breg;
#else
            float b[SCAN_SL_NPT];
            bw_get<SCAN_SL_NPT>(b, brow + t * SCAN_SL_NP);
#endif
#pragma unroll
            for (int i = 0; i < SCAN_SL_NPT; ++i)
                h[i] = fmaf(ssm_exp2_ftz(dt * A2[i]), h[i], dtu * b[i]);
        }
        if (k + 1 < tiles) stage(buf ^ 1);
    }
}
#endif  // SCAN_SL_NPT
