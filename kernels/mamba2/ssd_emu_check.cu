// Host program (not a kernel): runs ssd_fused.cu / ssd_simt.cu under the CPU
// emulation of ssd_emu.cuh on small random problems and compares outputs and
// final states with an f64 recurrence. Built and run by `cargo test` when a host
// C++ compiler is present (crates/mamba2-ssd/tests/emulated_kernels.rs); the
// command lines are in docs/kernels/mamba2-ssd.md ("Checking without a GPU").
//
// The kernel translation units are compiled separately (with -include ssd_emu.cuh)
// twice: once as the main pass and once with SSD_STATE_ONLY=1 renamed to
// EMU_STATE_ENTRY, so that split sequences run the real prepass.
//
// Usage: ssd_emu_check H G seed nseg_max len0 [len1 ...]
//   The lengths form cu_seqlens (one sequence = a plain batch of 1).
#include "ssd_emu.cuh"
#include "ssd_common.cuh"

#include <random>
#include <string>

#ifndef EMU_MAIN_ENTRY
#error "define EMU_MAIN_ENTRY and EMU_STATE_ENTRY (kernel entry names)"
#endif
#ifndef EMU_THREADS
#error "define EMU_THREADS (threads per block of the kernel)"
#endif
#ifndef EMU_PT
#error "define EMU_PT (head-dim columns per block)"
#endif
#ifndef EMU_SMEM
#error "define EMU_SMEM (dynamic shared memory bytes)"
#endif

#define EMU_SIG (const SsdArgs args)
extern "C" void EMU_MAIN_ENTRY EMU_SIG;
extern "C" void EMU_STATE_ENTRY EMU_SIG;
#ifdef EMU_CB_ENTRY
extern "C" void EMU_CB_ENTRY(const elem_t* B, const elem_t* C, const i64* chunks, float* cb, int G);
#endif

static elem_t round_elem(double v) {
#if SSD_DTYPE == 0
    return (float)v;
#else
    return f32_to_elem16((float)v);
#endif
}
static double widen(elem_t v) { return (double)elem_to_f32(v); }

int main(int argc, char** argv) {
    if (argc < 6) {
        std::fprintf(stderr, "usage: %s H G seed nseg_max len0 [len1 ...]\n", argv[0]);
        return 2;
    }
    const int H = std::atoi(argv[1]), G = std::atoi(argv[2]);
    const unsigned seed = (unsigned)std::atoi(argv[3]);
    const int nseg_max = std::atoi(argv[4]);
    std::vector<i64> lens;
    for (int i = 5; i < argc; ++i) lens.push_back(std::atoll(argv[i]));
    const int S = (int)lens.size();
    std::vector<i64> cu(S + 1, 0);
    for (int i = 0; i < S; ++i) cu[i + 1] = cu[i] + lens[i];
    const i64 L = cu[S];
    const int P = SSD_P, N = SSD_N, Q = SSD_Q;

    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::uniform_real_distribution<double> ud(0.0, 1.0);
    auto fill = [&](std::vector<elem_t>& v, size_t n, double scale, double shift) {
        v.resize(n);
        for (auto& e : v) e = round_elem(nd(rng) * scale + shift);
    };
    std::vector<elem_t> x, dt, B, C, z, out((size_t)(L * H * P));
    fill(x, (size_t)(L * H * P), 1.0, 0.0);
    fill(B, (size_t)(L * G * N), 1.0, 0.0);
    fill(C, (size_t)(L * G * N), 1.0, 0.0);
    fill(z, (size_t)(L * H * P), 1.0, 0.0);
#if SSD_DT_SOFTPLUS
    fill(dt, (size_t)(L * H), 1.0, -3.0);
#else
    dt.resize((size_t)(L * H));
    for (auto& e : dt) e = round_elem(0.02 + 0.3 * ud(rng));
#endif
    std::vector<float> A(H), dtb(H), D(H * P), s0((size_t)S * H * P * N);
    for (auto& a : A) a = (float)(-std::exp(nd(rng) * 0.5 - 0.5));
    for (auto& b : dtb) b = (float)(nd(rng) * 0.3);
    for (auto& d : D) d = (float)nd(rng);
    for (auto& s : s0) s = (float)nd(rng);
    const float dt_min = 0.001f, dt_max = 5.0f;
    for (auto& o : out) o = round_elem(NAN);

    // Work items (mirrors crates/mamba2-ssd/src/cuda/work.rs).
    std::vector<i64> items, prepass, chunk_tab;
    i64 slots = 0;
    for (int s = 0; s < S; ++s) {
        const i64 chunks = (lens[s] + Q - 1) / Q;
        i64 nseg = std::min<i64>(nseg_max, std::max<i64>(chunks, 1));
        const i64 seg_chunks = chunks == 0 ? 0 : (chunks + nseg - 1) / nseg;
        nseg = chunks == 0 ? 1 : (chunks + seg_chunks - 1) / seg_chunks;
        for (i64 k = 0; k < nseg; ++k) {
            const i64 start = k * seg_chunks * Q;
            const i64 end = std::min(lens[s], (k + 1) * seg_chunks * Q);
            const i64 it[7] = {cu[s] + start, end - start, s, k, nseg, slots, (i64)chunk_tab.size() / 2};
            items.insert(items.end(), it, it + 7);
            if (k + 1 < nseg) prepass.insert(prepass.end(), it, it + 7);
            for (i64 c = start; c < end; c += Q) {
                chunk_tab.push_back(cu[s] + c);
                chunk_tab.push_back(std::min<i64>(Q, end - c));
            }
        }
        slots += nseg - 1;
    }
    std::vector<float> ws_states((size_t)std::max<i64>(slots, 1) * H * P * N, NAN);
    std::vector<float> ws_decay((size_t)std::max<i64>(slots, 1) * H, NAN);
    std::vector<float> fin((size_t)S * H * P * N, NAN);

    const int npt = (P + EMU_PT - 1) / EMU_PT;
    const i64 nchunks = (i64)chunk_tab.size() / 2;
    const int tiles = (Q / 16) * (Q / 16 + 1) / 2;
    std::vector<float> cbw((size_t)std::max<i64>(nchunks, 1) * G * tiles * 256, NAN);
#ifdef EMU_CB_ENTRY
    if (nchunks > 0)
        emu::launch((unsigned)(nchunks * G), 128, EMU_SMEM,
                    [&] { EMU_CB_ENTRY(B.data(), C.data(), chunk_tab.data(), cbw.data(), G); });
#endif
    auto run = [&](auto entry, const std::vector<i64>& its) {
        const unsigned grid = (unsigned)(its.size() / 7) * H * npt;
        if (grid == 0) return;
        emu::launch(grid, EMU_THREADS, EMU_SMEM, [&] {
            entry(SsdArgs{x.data(), dt.data(), A.data(), B.data(), C.data(), dtb.data(), D.data(),
                          z.data(), s0.data(), out.data(), fin.data(), ws_states.data(),
                          ws_decay.data(), cbw.data(), its.data(), H, G, dt_min, dt_max});
        });
    };
    run(EMU_STATE_ENTRY, prepass);
    run(EMU_MAIN_ENTRY, items);

    // f64 recurrence on the rounded inputs.
    std::vector<double> ref_out((size_t)(L * H * P)), ref_fin((size_t)S * H * P * N);
    std::vector<double> st((size_t)P * N);
    for (int s = 0; s < S; ++s)
        for (int h = 0; h < H; ++h) {
            const int g = h / (H / G);
            for (int i = 0; i < P * N; ++i)
                st[i] = SSD_HAS_S0 ? (double)s0[((size_t)s * H + h) * P * N + i] : 0.0;
            for (i64 t = cu[s]; t < cu[s + 1]; ++t) {
                double v = widen(dt[t * H + h]) + (SSD_DT_BIAS ? (double)dtb[h] : 0.0);
                if (SSD_DT_SOFTPLUS) v = v > 20.0 ? v : std::log1p(std::exp(v));
                v = std::min(std::max(v, (double)dt_min), (double)dt_max);
                const double dA = std::exp(v * (double)A[h]);
                for (int p = 0; p < P; ++p) {
                    const double xv = widen(x[(t * H + h) * P + p]);
                    double y = 0.0;
                    for (int n = 0; n < N; ++n) {
                        double& e = st[(size_t)p * N + n];
                        e = dA * e + v * xv * widen(B[(t * G + g) * N + n]);
                        y += e * widen(C[(t * G + g) * N + n]);
                    }
                    if (SSD_D_MODE == 1) y += (double)D[h] * xv;
                    if (SSD_D_MODE == 2) y += (double)D[h * P + p] * xv;
                    if (SSD_HAS_Z) {
                        const double zz = widen(z[(t * H + h) * P + p]);
                        y *= zz / (1.0 + std::exp(-zz));
                    }
                    ref_out[(t * H + h) * P + p] = y;
                }
            }
            for (int i = 0; i < P * N; ++i) ref_fin[((size_t)s * H + h) * P * N + i] = st[i];
        }

    auto rel = [](const std::vector<double>& ref, auto get, size_t n, size_t* bad) {
        double d2 = 0, r2 = 0;
        *bad = 0;
        for (size_t i = 0; i < n; ++i) {
            const double o = get(i);
            if (!std::isfinite(o)) {
                ++*bad;
                continue;
            }
            d2 += (o - ref[i]) * (o - ref[i]);
            r2 += ref[i] * ref[i];
        }
        return r2 > 0 ? std::sqrt(d2 / r2) : std::sqrt(d2);
    };
    size_t bad_out = 0, bad_fin = 0;
    const double e_out = rel(ref_out, [&](size_t i) { return widen(out[i]); }, out.size(), &bad_out);
    double e_fin = 0.0;
    if (SSD_FINAL) e_fin = rel(ref_fin, [&](size_t i) { return (double)fin[i]; }, fin.size(), &bad_fin);
    std::printf("out rel_l2 %.3e (non-finite %zu of %zu)  final rel_l2 %.3e (non-finite %zu)\n",
                e_out, bad_out, out.size(), e_fin, bad_fin);
    const double budget = SSD_DTYPE == 0 ? 2e-5 : 8e-3;
    const bool ok = bad_out == 0 && bad_fin == 0 && e_out <= budget && e_fin <= 2e-5;
    std::printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
