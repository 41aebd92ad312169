// Host emulation of the CUDA features the SSD kernels use, for checking fragment
// layouts and index arithmetic without a GPU (g++ -std=c++20 -I kernels, see
// ssd_emu_check.cu and crates/mamba2-ssd/tests/emulated_kernels.rs).
//
// Each CUDA thread of a block runs as a fiber (ucontext) on one OS thread; a
// barrier (__syncthreads, __syncwarp and every warp-collective instruction) yields
// to the next fiber until all participants have arrived. Warp collectives
// (shuffles, ldmatrix, mma.sync) exchange their operands through a per-warp
// mailbox and compute each lane's result from the PTX ISA's fragment layouts, so
// a wrong layout assumption in a kernel shows up as a wrong answer here.
// NVRTC never includes this file.
#pragma once
#define SSD_EMULATE 1
// The shared headers in kernels/common/ switch to their host forms.
#define SSM_EMULATE 1

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

typedef unsigned int u32;
typedef unsigned short u16;

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    u32 x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(8) float2 {
    float x, y;
};

namespace emu {

struct dim3u {
    unsigned x, y, z;
};

struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    unsigned tid = 0;
    bool done = false;
};

struct Block {
    std::vector<Fiber> fibers;
    ucontext_t sched;
    int cur = 0;
    unsigned nthreads = 0;
    unsigned bar_count = 0, bar_gen = 0;
    unsigned warp_count[32] = {}, warp_gen[32] = {};
    // Mailbox: [warp][lane][slot] of raw 32-bit words.
    u32 box[32][32][16];
    std::vector<unsigned char> smem;
};

inline Block* g_block = nullptr;
inline dim3u g_block_idx{0, 0, 0}, g_grid_dim{1, 1, 1}, g_block_dim{1, 1, 1};
inline std::function<void()> g_body;

inline Fiber& me() { return g_block->fibers[g_block->cur]; }
inline dim3u thread_idx() { return dim3u{me().tid, 0, 0}; }
inline unsigned char* shared_memory() { return g_block->smem.data(); }
inline void yield() { swapcontext(&me().ctx, &g_block->sched); }

inline void sync_block() {
    Block& b = *g_block;
    const unsigned gen = b.bar_gen;
    if (++b.bar_count == b.nthreads) {
        b.bar_count = 0;
        ++b.bar_gen;
        return;
    }
    while (b.bar_gen == gen) yield();
}

inline void sync_warp() {
    Block& b = *g_block;
    const unsigned w = me().tid / 32;
    const unsigned gen = b.warp_gen[w];
    if (++b.warp_count[w] == 32) {
        b.warp_count[w] = 0;
        ++b.warp_gen[w];
        return;
    }
    while (b.warp_gen[w] == gen) yield();
}

inline u32* my_box() { return g_block->box[me().tid / 32][me().tid % 32]; }
inline u32* lane_box(unsigned lane) { return g_block->box[me().tid / 32][lane]; }

inline void fiber_entry() {
    g_body();
    me().done = true;
    swapcontext(&me().ctx, &g_block->sched);
}

// Run `body` as a grid of 1-D blocks of `threads` threads with `smem_bytes` of
// dynamic shared memory (filled with a NaN pattern, like uninitialised memory).
inline void launch(unsigned grid, unsigned threads, size_t smem_bytes, std::function<void()> body) {
    g_body = std::move(body);
    g_grid_dim = dim3u{grid, 1, 1};
    g_block_dim = dim3u{threads, 1, 1};
    for (unsigned bx = 0; bx < grid; ++bx) {
        Block b;
        b.nthreads = threads;
        b.smem.assign(smem_bytes + 16, 0xff);
        b.fibers.resize(threads);
        g_block = &b;
        g_block_idx = dim3u{bx, 0, 0};
        for (unsigned t = 0; t < threads; ++t) {
            Fiber& f = b.fibers[t];
            f.tid = t;
            f.stack.resize(256 * 1024);
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack.data();
            f.ctx.uc_stack.ss_size = f.stack.size();
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, fiber_entry, 0);
        }
        unsigned remaining = threads;
        while (remaining > 0) {
            remaining = 0;
            for (unsigned t = 0; t < threads; ++t) {
                if (b.fibers[t].done) continue;
                b.cur = (int)t;
                swapcontext(&b.sched, &b.fibers[t].ctx);
                if (!b.fibers[t].done) ++remaining;
            }
        }
        g_block = nullptr;
    }
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::g_block_idx)
#define blockDim (::emu::g_block_dim)
#define gridDim (::emu::g_grid_dim)

inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }

template <typename T>
inline T emu_shfl(T v, int src_lane) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    u32 bits;
    std::memcpy(&bits, &v, 4);
    emu::my_box()[0] = bits;
    emu::sync_warp();
    const u32 got = emu::lane_box((unsigned)src_lane)[0];
    emu::sync_warp();
    T r;
    std::memcpy(&r, &got, 4);
    return r;
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src) {
    return emu_shfl(v, src & 31);
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
    return emu_shfl(v, (int)(emu::me().tid % 32) ^ mask);
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta) {
    const int lane = (int)(emu::me().tid % 32);
    const int src = lane - (int)delta;
    return emu_shfl(v, src < 0 ? lane : src);
}

// --- element conversions --------------------------------------------------
// The host branch of the shared conversions (SSM_EMULATE): the kernels and this
// emulation convert with the same code.
#include "../common/convert.cuh"
inline float __uint_as_float(u32 b) { return ssm_bits_as_f32(b); }
inline u32 __float_as_uint(float f) {
    u32 b;
    std::memcpy(&b, &f, 4);
    return b;
}
inline float __int_as_float(int b) { return __uint_as_float((u32)b); }
inline int __float_as_int(float f) { return (int)__float_as_uint(f); }

// --- ldmatrix ---------------------------------------------------------------
// Lane l of the warp gives the address of row (l % 8) of matrix (l / 8).
inline void emu_ldsm(u32* r, int count, const void* p, bool trans) {
    const uintptr_t a = (uintptr_t)p;
    emu::my_box()[0] = (u32)(a & 0xffffffffu);
    emu::my_box()[1] = (u32)(a >> 32);
    emu::sync_warp();
    const unsigned lane = emu::me().tid % 32;
    auto row_ptr = [](unsigned l) {
        const u32* bx = emu::lane_box(l);
        return (const u16*)(((uintptr_t)bx[1] << 32) | bx[0]);
    };
    for (int m = 0; m < count; ++m) {
        u16 e0, e1;
        if (!trans) {  // row lane/4, columns 2(lane%4), +1
            const u16* row = row_ptr(8 * m + lane / 4);
            e0 = row[2 * (lane % 4)];
            e1 = row[2 * (lane % 4) + 1];
        } else {  // rows 2(lane%4), +1, column lane/4
            e0 = row_ptr(8 * m + 2 * (lane % 4))[lane / 4];
            e1 = row_ptr(8 * m + 2 * (lane % 4) + 1)[lane / 4];
        }
        r[m] = (u32)e0 | ((u32)e1 << 16);
    }
    emu::sync_warp();
}
inline void ldsm_x4(u32 r[4], const void* p) { emu_ldsm(r, 4, p, false); }
inline void ldsm_x4_trans(u32 r[4], const void* p) { emu_ldsm(r, 4, p, true); }
inline void ldsm_x2_trans(u32 r[2], const void* p) { emu_ldsm(r, 2, p, true); }

// --- mma.sync m16n8k16, f32 accumulate ----------------------------------------
inline float emu_elem16(u16 b);  // defined by the includer's dtype (below)
inline void mma16816(float d[4], const u32 a[4], u32 b0, u32 b1) {
    u32* bx = emu::my_box();
    for (int i = 0; i < 4; ++i) bx[i] = a[i];
    bx[4] = b0;
    bx[5] = b1;
    emu::sync_warp();
    auto half_of = [](u32 w, int hi) { return emu_elem16((u16)(hi ? w >> 16 : w & 0xffffu)); };
    // A[r][k]: lane (r % 8) * 4 + (k % 8) / 2, register (r >= 8) + 2 (k >= 8), half k % 2.
    auto A = [&](int r, int k) {
        const u32* l = emu::lane_box((unsigned)((r % 8) * 4 + (k % 8) / 2));
        return half_of(l[(r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2);
    };
    // B[k][n]: lane n * 4 + (k % 8) / 2, register b0 (k < 8) or b1, half k % 2.
    auto Bm = [&](int k, int n) {
        const u32* l = emu::lane_box((unsigned)(n * 4 + (k % 8) / 2));
        return half_of(l[4 + (k >= 8 ? 1 : 0)], k % 2);
    };
    const unsigned lane = emu::me().tid % 32;
    const int g = (int)lane / 4, t = (int)lane % 4;
    float out[4];
    for (int e = 0; e < 4; ++e) {
        const int r = g + (e >= 2 ? 8 : 0), c = 2 * t + (e % 2);
        float acc = d[e];
        for (int k = 0; k < 16; ++k) acc += A(r, k) * Bm(k, c);
        out[e] = acc;
    }
    emu::sync_warp();
    for (int e = 0; e < 4; ++e) d[e] = out[e];
}

// --- cp.async: a plain copy (completion is immediate) -------------------------
inline void cp_async16(void* dst, const void* src, int src_bytes) {
    std::memset(dst, 0, 16);
    if (src_bytes > 0) std::memcpy(dst, src, (size_t)src_bytes);
}
inline void cp_async_commit() {}
inline void store_b32x4(void* p, uint4 v) { std::memcpy(p, &v, sizeof v); }
inline void store_b32x2(void* p, u32 lo, u32 hi) {
    const u32 v[2] = {lo, hi};
    std::memcpy(p, v, sizeof v);
}
template <int PENDING>
inline void cp_async_wait() {}
