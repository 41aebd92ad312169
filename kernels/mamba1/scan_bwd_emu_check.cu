// Host check of kernels/mamba1/scan_bwd.cu under the warp emulation
// (kernels/mamba2/ssd_emu.cuh): the four backward kernels run on the CPU on a
// random problem and every gradient is compared with an f64 adjoint that stores
// every state (docs/BACKWARD-MAMBA1.md §3). Built and run by
// crates/mamba1-scan/tests/emulated_backward.rs with the kernel's -D flags:
//
//   g++ -std=c++20 -I kernels -include kernels/mamba2/ssd_emu.cuh \
//       kernels/mamba1/scan_bwd_emu_check.cu -DSCAN_DTYPE=0 -DSCAN_N=5 ...
//   ./check b D_in L G_B G_C seed [len0 len1 ...]   (G = 0: constant; lens: varlen, b = 1)
//
// Prints one line per gradient (max |err| / max |ref|) and exits 1 when any
// exceeds its budget, 2 on bad arguments. The inputs are f32 (SCAN_DTYPE=0) so
// that the comparison measures the kernel's arithmetic, not input rounding.
//
// The training forward (kernels/mamba1/scan_fwd.cu with SCAN_CKPT_BT, which
// writes the checkpoints in place of mamba1_scan_bwd_ckpt) has other -D
// values for the same macro names, so it is a second translation unit of this
// file: compiled with -DSCAN_EMU_FWD_TU and the forward's flags (SCAN_VEC_IO=0)
// it defines emu_scan_fwd(); the check compiled with -DSCAN_EMU_WITH_FWD runs
// it after the checkpoint kernel, requires its checkpoints to be the kernel's
// bit for bit and its output to match the f64 forward, and feeds the sweep
// with the forward's checkpoints.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

// The forward's tensors and sizes, shared by the two translation units.
struct EmuFwdIo {
    const float *u, *delta, *A, *B, *C, *D, *z, *bias, *h0;
    const long long* cu;
    float *out, *final_states, *ckpt;
    long long ckpt_slots, b, Din, L, GB, GC, seqs;
};

#ifdef SCAN_EMU_FWD_TU
#include "mamba1/scan_fwd.cu"

extern "C" void emu_scan_fwd(const EmuFwdIo& e) {
    const long long per_gb = e.Din / e.GB, per_gc = e.Din / e.GC;
    const long long seg = std::gcd(SCAN_B_CONST ? e.Din : per_gb, SCAN_C_CONST ? e.Din : per_gc);
    const long long bps_seg = (seg + SCAN_CPB - 1) / SCAN_CPB;
    ScanArgs a{};
    unsigned status = 0;
    a.u = e.u, a.delta = e.delta, a.A = e.A, a.B = e.B, a.C = e.C;
    a.D = SCAN_HAS_D ? e.D : nullptr;
    a.z = SCAN_HAS_Z ? e.z : nullptr;
    a.delta_bias = SCAN_HAS_BIAS ? e.bias : nullptr;
    a.initial_states = e.h0, a.cu_seqlens = e.cu, a.out = e.out, a.final_states = e.final_states;
    a.status = &status;
    a.d_inner = e.Din, a.seqlen = e.L, a.groups_b = e.GB, a.groups_c = e.GC, a.seg_channels = seg;
    a.blocks_per_seg = bps_seg, a.blocks_per_seq = (e.Din / seg) * bps_seg;
    a.ckpt = e.ckpt, a.ckpt_slots = e.ckpt_slots;
    const size_t smem = sizeof(float2) * SCAN_CPB * SCAN_SLOT_STRIDE +
                        4 * SCAN_CPB * SCAN_TPC * SCAN_PART_STRIDE +
                        4 * SCAN_BC_GROUPED * SCAN_TILE * SCAN_NP;
    emu::launch((unsigned)(e.seqs * a.blocks_per_seq), SCAN_THREADS, smem,
                [&] { mamba1_scan_fwd(a); });
    if (status != 0) std::printf("forward status %u\n", status);
}
#else
#include "mamba1/scan_bwd.cu"
#ifdef SCAN_EMU_WITH_FWD
extern "C" void emu_scan_fwd(const EmuFwdIo& e);
#endif

#if SCAN_DTYPE != 0
#error "the emulation check runs on f32 inputs"
#endif

typedef long long i64;

static double max_abs(const std::vector<double>& v) {
    double m = 0;
    for (double x : v) m = std::max(m, std::fabs(x));
    return m;
}

static bool judge(const char* name, const std::vector<float>& got, const std::vector<double>& want,
                  double budget) {
    if (got.size() != want.size()) {
        std::printf("%-16s size %zu, expected %zu\n", name, got.size(), want.size());
        return false;
    }
    double err = 0;
    bool finite = true;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) finite = false;
        err = std::max(err, std::fabs((double)got[i] - want[i]));
    }
    const double scale = std::max(max_abs(want), 1e-30);
    const bool ok = finite && err / scale <= budget;
    std::printf("%-16s rel %.3e (budget %.1e) %s\n", name, err / scale, budget, ok ? "ok" : "FAILED");
    return ok;
}

int main(int argc, char** argv) {
    if (argc < 7) {
        std::fprintf(stderr, "usage: %s b D_in L G_B G_C seed [lens...]\n", argv[0]);
        return 2;
    }
    const i64 b = std::atoll(argv[1]), Din = std::atoll(argv[2]), L = std::atoll(argv[3]);
    const i64 GBa = std::atoll(argv[4]), GCa = std::atoll(argv[5]);
    const unsigned seed = (unsigned)std::atoll(argv[6]);
    std::vector<i64> cu;
    if (argc > 7) {
        cu.push_back(0);
        for (int i = 7; i < argc; ++i) cu.push_back(cu.back() + std::atoll(argv[i]));
        if (b != 1 || cu.back() != L) {
            std::fprintf(stderr, "varlen needs b = 1 and lengths summing to L\n");
            return 2;
        }
    }
    const bool b_const = SCAN_B_CONST, c_const = SCAN_C_CONST;
    if ((GBa == 0) != b_const || (GCa == 0) != c_const) {
        std::fprintf(stderr, "G_B/G_C = 0 exactly when SCAN_B_CONST/SCAN_C_CONST\n");
        return 2;
    }
    const i64 GB = b_const ? 1 : GBa, GC = c_const ? 1 : GCa;
    const i64 N = SCAN_N;
    const i64 seqs = cu.empty() ? b : (i64)cu.size() - 1;
    auto seq_range = [&](i64 s, i64& row, i64& lo, i64& hi) {
        if (cu.empty()) {
            row = s, lo = 0, hi = L;
        } else {
            row = 0, lo = cu[s], hi = cu[s + 1];
        }
    };

    std::mt19937 rng(seed);
    auto uni = [&](float lo, float hi) {
        return std::uniform_real_distribution<float>(lo, hi)(rng);
    };
    auto fill = [&](i64 n, float lo, float hi) {
        std::vector<float> v((size_t)n);
        for (auto& x : v) x = uni(lo, hi);
        return v;
    };
    const i64 io = b * Din * L;
    const i64 bc_b = b_const ? Din * N : b * GB * N * L, bc_c = c_const ? Din * N : b * GC * N * L;
    auto u = fill(io, -1, 1), delta = fill(io, SCAN_SOFTPLUS ? -3.0f : 0.01f, SCAN_SOFTPLUS ? 1.0f : 0.6f);
    auto A = fill(Din * N, -2.0f, -0.3f), B = fill(bc_b, -1, 1), C = fill(bc_c, -1, 1);
    auto D = fill(Din, -1, 1), z = fill(io, -3, 3), bias = fill(Din, -0.5f, 0.5f);
    auto h0 = fill(seqs * Din * N, -1, 1), g = fill(io, -1, 1), gfin = fill(seqs * Din * N, -1, 1);
    // A few delta past the softplus threshold, to take its other branch.
    for (i64 i = 0; i < io; i += 37) delta[i] = SCAN_SOFTPLUS ? 21.0f + uni(0, 2) : delta[i];
    // ... with bias the threshold moves; keep those positions' dt moderate when
    // not using softplus.

    // ---- f64 adjoint with every state stored.
    std::vector<double> rout(io, 0);  // the forward's output, for the training forward
    std::vector<double> rdu(io, 0), rddelta(io, 0), rdz(io, 0), rdA(Din * N, 0), rdB(bc_b, 0),
        rdC(bc_c, 0), rdD(Din, 0), rdbias(Din, 0), rdh0(seqs * Din * N, 0);
    const i64 per_gb = Din / GB, per_gc = Din / GC;
    for (i64 s = 0; s < seqs; ++s) {
        i64 row, lo, hi;
        seq_range(s, row, lo, hi);
        const i64 len = hi - lo;
        for (i64 d = 0; d < Din; ++d) {
            const i64 gb = d / per_gb, gc = d / per_gc;
            auto Bv = [&](i64 t, i64 n) -> double {
                return b_const ? B[d * N + n] : B[((row * GB + gb) * N + n) * L + t];
            };
            auto Cv = [&](i64 t, i64 n) -> double {
                return c_const ? C[d * N + n] : C[((row * GC + gc) * N + n) * L + t];
            };
            std::vector<double> hs((size_t)(len + 1) * N), dts(len), xs(len), ys(len);
            for (i64 n = 0; n < N; ++n) hs[n] = h0[(s * Din + d) * N + n];
            for (i64 k = 0; k < len; ++k) {
                const i64 t = lo + k, at = (row * Din + d) * L + t;
                double x = delta[at] + (SCAN_HAS_BIAS ? bias[d] : 0.0);
                xs[k] = x;
                const double dt = SCAN_SOFTPLUS ? (x > 20 ? x : std::log1p(std::exp(x))) : x;
                dts[k] = dt;
                double y = SCAN_HAS_D ? D[d] * (double)u[at] : 0.0;
                for (i64 n = 0; n < N; ++n) {
                    const double a = std::exp(dt * A[d * N + n]);
                    const double h = a * hs[k * N + n] + dt * u[at] * Bv(t, n);
                    hs[(k + 1) * N + n] = h;
                    y += Cv(t, n) * h;
                }
                ys[k] = y;
                rout[at] = SCAN_HAS_Z ? y * (double)z[at] / (1.0 + std::exp(-(double)z[at])) : y;
            }
            std::vector<double> lam(N);
            for (i64 n = 0; n < N; ++n) lam[n] = gfin[(s * Din + d) * N + n];
            for (i64 k = len - 1; k >= 0; --k) {
                const i64 t = lo + k, at = (row * Din + d) * L + t;
                const double dt = dts[k], uu = u[at];
                double gy = g[at];
                if (SCAN_HAS_Z) {
                    const double sg = 1.0 / (1.0 + std::exp(-(double)z[at]));
                    gy = g[at] * z[at] * sg;
                    rdz[at] = g[at] * ys[k] * sg * (1.0 + z[at] * (1.0 - sg));
                }
                rdD[d] += gy * uu;
                double s1 = 0, s2 = 0;
                for (i64 n = 0; n < N; ++n) {
                    lam[n] += Cv(t, n) * gy;
                    const double hprev = hs[k * N + n], ht = hs[(k + 1) * N + n];
                    const double a = std::exp(dt * A[d * N + n]);
                    const i64 ib = b_const ? d * N + n : ((row * GB + gb) * N + n) * L + t;
                    const i64 ic = c_const ? d * N + n : ((row * GC + gc) * N + n) * L + t;
                    rdC[ic] += gy * ht;
                    rdB[ib] += lam[n] * dt * uu;
                    s1 += lam[n] * Bv(t, n);
                    const double w = lam[n] * a * hprev;
                    s2 += A[d * N + n] * w;
                    rdA[d * N + n] += dt * w;
                    lam[n] *= a;
                }
                rdu[at] = (SCAN_HAS_D ? gy * D[d] : 0.0) + dt * s1;
                const double ddt = s2 + s1 * uu;
                const double x = xs[k];
                const double dd = SCAN_SOFTPLUS ? (x > 20 ? ddt : ddt / (1.0 + std::exp(-x))) : ddt;
                rddelta[at] = dd;
                rdbias[d] += dd;
            }
            for (i64 n = 0; n < N; ++n) rdh0[(s * Din + d) * N + n] = lam[n];
        }
    }

    // ---- the kernels.
    const i64 seg = std::gcd(b_const ? Din : per_gb, c_const ? Din : per_gc);
    const i64 bps_seg = (seg + SCAN_CPB - 1) / SCAN_CPB;
    const i64 bps = (Din / seg) * bps_seg;
    // The sweep's blocks (and the dB/dC partials'): the slice-major sweep's
    // cover 32 channels, the lanes sweep's SCAN_CPB.
#ifdef SCAN_SL_NPT
    const i64 sw_cpb = 32;
#else
    const i64 sw_cpb = SCAN_CPB;
#endif
    const i64 sw_bps_seg = (seg + sw_cpb - 1) / sw_cpb;
    const i64 sw_bps = (Din / seg) * sw_bps_seg;
    const i64 rows = cu.empty() ? b : 1;
    const i64 slots = cu.empty() ? (L + SCAN_BT - 1) / SCAN_BT : L / SCAN_BT + seqs;
    const float nan = NAN;
    std::vector<float> ckpt((size_t)std::max<i64>(rows * Din * slots * N, 1), nan);
    std::vector<float> du(io, nan), ddelta(io, nan), dz(io, nan), dh0(seqs * Din * N, nan);
    std::vector<float> part_b((size_t)std::max<i64>(b_const ? 1 : rows * sw_bps * N * L, 1), nan);
    std::vector<float> part_c((size_t)std::max<i64>(c_const ? 1 : rows * sw_bps * N * L, 1), nan);
    std::vector<float> part_p((size_t)(seqs * Din * SCAN_PARAMS), nan);
    std::vector<float> dB(bc_b, nan), dC(bc_c, nan), dA(Din * N, nan), dD(Din, nan), dbias(Din, nan);

    ScanBwdArgs a{};
    a.u = u.data(), a.delta = delta.data(), a.A = A.data(), a.B = B.data(), a.C = C.data();
    a.D = SCAN_HAS_D ? D.data() : nullptr;
    a.z = SCAN_HAS_Z ? z.data() : nullptr;
    a.delta_bias = SCAN_HAS_BIAS ? bias.data() : nullptr;
    a.initial_states = h0.data();
    a.cu_seqlens = cu.empty() ? nullptr : cu.data();
    a.d_out = g.data();
    a.d_final_states = gfin.data();
    a.ckpt = ckpt.data(), a.du = du.data(), a.ddelta = ddelta.data();
    a.dz = SCAN_HAS_Z ? dz.data() : nullptr;
    a.dinitial_states = dh0.data();
    a.part_b = b_const ? nullptr : part_b.data();
    a.part_c = c_const ? nullptr : part_c.data();
    a.part_params = part_p.data();
    a.dB = dB.data(), a.dC = dC.data(), a.dA = dA.data();
    a.dD = SCAN_HAS_D ? dD.data() : nullptr;
    a.ddelta_bias = SCAN_HAS_BIAS ? dbias.data() : nullptr;
    a.d_inner = Din, a.seqlen = L, a.groups_b = GB, a.groups_c = GC, a.seg_channels = seg;
    a.blocks_per_seg = bps_seg, a.blocks_per_seq = bps, a.num_seqs = seqs, a.ckpt_slots = slots;

    const unsigned grid = (unsigned)(seqs * bps);
    const size_t smem = SCAN_SM_FLOATS * 4;
    emu::launch(grid, SCAN_CK_THREADS, SCAN_CKPT_FLOATS * 4, [&] { mamba1_scan_bwd_ckpt(a); });
    bool ok = true;
#ifdef SCAN_SL_NPT
    // The slice-major checkpoint kernel (on the sweep's blocks of 32 channels):
    // bit for bit the lanes kernel's checkpoints; the sweep then reads its own.
    {
        std::vector<float> ckpt_sm(ckpt.size(), nan);
        ScanBwdArgs s = a;
        s.ckpt = ckpt_sm.data();
        s.blocks_per_seg = sw_bps_seg, s.blocks_per_seq = sw_bps;
        emu::launch((unsigned)(seqs * sw_bps), SCAN_SL_THREADS, SCAN_SL_CKPT_FLOATS * 4,
                    [&] { mamba1_scan_bwd_ckpt_sm(s); });
        const bool same = std::memcmp(ckpt.data(), ckpt_sm.data(), ckpt.size() * sizeof(float)) == 0;
        std::printf("%-16s %s\n", "ckpt (slices)",
                    same ? "bit-identical to the lanes checkpoint kernel's: ok"
                         : "DIFFER from the lanes checkpoint kernel's: FAILED");
        ok &= same;
        ckpt = ckpt_sm;
        a.ckpt = ckpt.data();
    }
#endif
#ifdef SCAN_EMU_WITH_FWD
    // The training forward's checkpoints, bit for bit the kernel's (slots
    // neither writes keep the same NaN in both); the sweep then reads them.
    std::vector<float> ckpt_fwd(ckpt.size(), nan), out(io, nan), fin(seqs * Din * N, nan);
    emu_scan_fwd(EmuFwdIo{u.data(), delta.data(), A.data(), B.data(), C.data(), D.data(), z.data(),
                          bias.data(), h0.data(), cu.empty() ? nullptr : cu.data(), out.data(),
                          fin.data(), ckpt_fwd.data(), slots, b, Din, L, GB, GC, seqs});
    const bool same = std::memcmp(ckpt.data(), ckpt_fwd.data(), ckpt.size() * sizeof(float)) == 0;
    size_t written = 0;
    for (float x : ckpt_fwd) written += std::isnan(x) ? 0 : 1;
    std::printf("%-16s %zu of %zu floats written, %s\n", "ckpt (forward)", written, ckpt.size(),
                same ? "bit-identical to the checkpoint kernel's: ok" : "DIFFER from the checkpoint kernel's: FAILED");
    ok &= same;
    ok &= judge("out (forward)", out, rout, 1e-5);
    a.ckpt = ckpt_fwd.data();
#endif
    a.blocks_per_seg = sw_bps_seg, a.blocks_per_seq = sw_bps;
    const unsigned sw_grid = (unsigned)(seqs * sw_bps);
#ifdef SCAN_SL_NPT
    std::printf("%-16s slice-major: %d slices of %d states, %s decays\n", "sweep", SCAN_SL_SLICES,
                SCAN_SL_NPT, SCAN_SL_KEEP ? "kept" : "recomputed");
    (void)smem;
    emu::launch(sw_grid, SCAN_SL_THREADS, SCAN_SL_FLOATS * 4, [&] { mamba1_scan_bwd_sm(a); });
#else
    emu::launch(sw_grid, SCAN_THREADS, smem, [&] { mamba1_scan_bwd(a); });
#endif
    if (!b_const) emu::launch(3, 256, 0, [&] { mamba1_scan_bwd_reduce_bc(a, 0); });
    if (!c_const) emu::launch(3, 256, 0, [&] { mamba1_scan_bwd_reduce_bc(a, 1); });
    emu::launch(2, 256, 0, [&] { mamba1_scan_bwd_reduce_params(a); });

    const double tol = 2e-4;
    ok &= judge("du", du, rdu, tol);
    ok &= judge("ddelta", ddelta, rddelta, tol);
    ok &= judge("dA", dA, rdA, tol);
    ok &= judge("dB", dB, rdB, tol);
    ok &= judge("dC", dC, rdC, tol);
    if (SCAN_HAS_D) ok &= judge("dD", dD, rdD, tol);
    if (SCAN_HAS_Z) ok &= judge("dz", dz, rdz, tol);
    if (SCAN_HAS_BIAS) ok &= judge("ddelta_bias", dbias, rdbias, tol);
    ok &= judge("dinitial_states", dh0, rdh0, tol);
    return ok ? 0 : 1;
}
#endif  // SCAN_EMU_FWD_TU
