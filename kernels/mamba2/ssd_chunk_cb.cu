// C B^T of every chunk, once per group (docs/DESIGN.md §1.2, step 2's matrix), for the
// fused kernel built with SSD_CB_GLOBAL: the heads of a group (and the P tiles of
// a head) then read the 16 x 16 tiles instead of each recomputing them.
//
// One block per (chunk, group). The chunk's B and C (Q x N) arrive by cp.async;
// warps take the tiles on or below the diagonal in turn (SSD_CB_TILE order) and
// store each as two halves (columns 0-7, 8-15) of 32 lanes x 4 f32 in mma.sync
// accumulator order, so the consumer reads its fragment with two 16-byte loads. Rows past the chunk's length are
// zero (zero-filled inputs), and the mask and decays are applied by the consumer.
//
// Defines: SSD_DTYPE 1|2, SSD_Q, SSD_N, SSD_MAX_SMEM (as ssd_fused.cu).
#include "ssd_common.cuh"

#if SSD_DTYPE == 0
#error "ssd_chunk_cb.cu serves the f16/bf16 tensor-core kernel"
#endif

namespace ssd_cb {
constexpr int Q = SSD_Q;
constexpr int N = SSD_N;
constexpr int NW = 4;
constexpr int NT = NW * 32;
constexpr int BS = N + 8;
constexpr int RT = Q / 16;
constexpr int TILES = RT * (RT + 1) / 2;
constexpr int SMEM_BYTES = 2 * Q * BS * 2;
static_assert(N % 16 == 0 && Q % 16 == 0, "tile sizes");
// The device's opt-in shared memory per block, from the launcher (DeviceLimits);
// 227 KiB (sm_90) when built without it (the CPU emulation).
#ifndef SSD_MAX_SMEM
#define SSD_MAX_SMEM (227 * 1024)
#endif
static_assert(SMEM_BYTES <= SSD_MAX_SMEM, "shared memory past the device's per-block limit");
}  // namespace ssd_cb

// chunks: (first token, length) per chunk; cb: (chunk, G, TILES, 32, 8) f32.
extern "C" __global__ void __launch_bounds__(ssd_cb::NT)
    ssd_chunk_cb(const elem_t* B, const elem_t* C, const i64* chunks, float* cb, int G) {
    using namespace ssd_cb;
    SSM_DYNAMIC_SMEM(smem);
    u16* bs = reinterpret_cast<u16*>(smem);
    u16* cs = bs + Q * BS;
    const i64 chunk = blockIdx.x / G;
    const int g = blockIdx.x % G;
    const i64 tok = chunks[2 * chunk];
    const int clen = (int)chunks[2 * chunk + 1];
    const i64 GN = (i64)G * N;
    constexpr int BV = N / 8;
    for (int v = threadIdx.x; v < Q * BV; v += NT) {
        const int r = v / BV, c = (v % BV) * 8;
        const bool in = r < clen;
        const i64 off = (tok + r) * GN + (i64)g * N + c;
        cp_async16(bs + r * BS + c, in ? B + off : B, in ? 16 : 0);
        cp_async16(cs + r * BS + c, in ? C + off : C, in ? 16 : 0);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r1 = (lane & 7) + ((lane >> 3) & 1) * 8, c1 = (lane >> 4) * 8;
    const int r2 = (lane & 7) + (lane >> 4) * 8, c2 = ((lane >> 3) & 1) * 8;
    float* out = cb + ((i64)chunk * G + g) * TILES * 256;
    for (int rt = 0; rt < RT; ++rt) {
        for (int jt = 0; jt <= rt; ++jt) {
            const int tile = SSD_CB_TILE(rt, jt);
            if (tile % NW != warp) continue;
            float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll 4
            for (int ks = 0; ks < N / 16; ++ks) {
                u32 af[4], bf[4];
                ldsm_x4(af, cs + (rt * 16 + r1) * BS + ks * 16 + c1);
                ldsm_x4(bf, bs + (jt * 16 + r2) * BS + ks * 16 + c2);
                mma16816(acc[0], af, bf[0], bf[1]);
                mma16816(acc[1], af, bf[2], bf[3]);
            }
            // [tile][n-tile half][lane][4]: a warp's 16-byte reads of one half are
            // 512 contiguous bytes.
            float* dst = out + tile * 256 + lane * 4;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                dst[e] = acc[0][e];
                dst[128 + e] = acc[1][e];
            }
        }
    }
}
