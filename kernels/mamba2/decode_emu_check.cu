// Host program (not a kernel): runs kernels/mamba2/decode.cu under the CPU
// emulation of ssd_emu.cuh (one fiber per CUDA thread, shuffles through a
// per-warp mailbox) on a small random step and compares the output and the
// updated state cache with an f64 step. Built and run by `cargo test` when a host
// C++ compiler is present (crates/mamba2-ssd/tests/emulated_decode.rs), once per
// tiling the bench compares: what checks the lane layout, the row tiling, the
// padding path and the option switches of every tiling without a GPU.
//
// Compile with the kernel's defines (D_STATE VEC TPR ROWS WARPS [STREAM_STATE]
// [DECODE_STATE_DTYPE]) and EMU_DTYPE (0: f32, 1: bf16, 2: f16 inputs). With a
// 16-bit state (DECODE_STATE_DTYPE 1 f16, 2 bf16) the initial state is drawn
// representable in it and the state budget is that of one stored rounding,
// 1e-5 + u (ssm_core::tolerance::stored_state_budget(dtype, 1)):
//   g++ -std=c++20 -O1 -I kernels -DD_STATE=128 ... kernels/mamba2/decode_emu_check.cu
// Usage: decode_emu_check b H P G seed options
//   options: a string of letters: i (state indices with a padding row and an index
//   past the cache), d (D per head), e (D per head and head-dim index), z, s
//   (softplus), a (dt_bias), l (a dt clamp).
#include "ssd_emu.cuh"
#include "decode.cu"

#include <random>
#include <string>

#if EMU_DTYPE == 0
typedef float elem_t;
#elif EMU_DTYPE == 1
typedef bf16_t elem_t;
#else
typedef f16_t elem_t;
#endif

static void run(const Mamba2DecodeArgs& a, unsigned grid) {
    emu::launch(grid, THREADS, 0, [&] {
#if EMU_DTYPE == 0
        mamba2_decode_f32(a);
#elif EMU_DTYPE == 1
        mamba2_decode_bf16(a);
#else
        mamba2_decode_f16(a);
#endif
    });
}

static double rel_l2(const std::vector<double>& ref, const std::vector<double>& got) {
    double num = 0, den = 0;
    for (size_t k = 0; k < ref.size(); ++k) {
        num += (got[k] - ref[k]) * (got[k] - ref[k]);
        den += ref[k] * ref[k];
    }
    return std::sqrt(num / (den > 0 ? den : 1));
}

int main(int argc, char** argv) {
    if (argc < 7) {
        std::fprintf(stderr, "usage: %s b H P G seed options\n", argv[0]);
        return 2;
    }
    const int b = std::atoi(argv[1]), H = std::atoi(argv[2]), P = std::atoi(argv[3]),
              G = std::atoi(argv[4]);
    const unsigned seed = (unsigned)std::atoi(argv[5]);
    const std::string opt = argv[6];
    auto on = [&](char c) { return opt.find(c) != std::string::npos; };
    const int N = D_STATE;
    // With indices: one more cache row than live batch rows (one cache row no
    // batch row points at, which must stay bit-identical).
    const int cache_rows = on('i') ? b + 1 : b;

    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::uniform_real_distribution<double> ud(0.0, 1.0);
    auto elems = [&](size_t n, double scale, double shift) {
        std::vector<elem_t> v(n);
        for (auto& e : v) e = from_f32<elem_t>((float)(nd(rng) * scale + shift));
        return v;
    };
    auto floats = [&](size_t n, double scale, double shift) {
        std::vector<float> v(n);
        for (auto& e : v) e = (float)(nd(rng) * scale + shift);
        return v;
    };
    std::vector<elem_t> x = elems((size_t)b * H * P, 1, 0), dt = elems((size_t)b * H, 1, -2),
                        B = elems((size_t)b * G * N, 1, 0), C = elems((size_t)b * G * N, 1, 0),
                        z = elems((size_t)b * H * P, 1, 0);
    std::vector<float> A(H), Dh = floats(H, 1, 0), Dhp = floats((size_t)H * P, 1, 0),
                       bias = floats(H, 0.5, 0);
    for (auto& v : A) v = (float)-(1.0 + 15.0 * ud(rng));
    if (!on('s'))  // positive step sizes without softplus
        for (auto& e : dt) e = from_f32<elem_t>((float)(0.01 + 0.5 * ud(rng)));
    std::vector<state_t> state((size_t)cache_rows * H * P * N);
    for (auto& e : state) e = from_f32<state_t>((float)nd(rng));
    const std::vector<state_t> state0 = state;
    // Indices: reversed rows; row 0 is padding (-1) and, with b >= 3, row 1 points
    // past the cache (NaN output, no write).
    std::vector<long long> idx(b);
    for (int i = 0; i < b; ++i) idx[i] = b - i;  // cache row 0 is never pointed at
    if (on('i')) {
        idx[0] = -1;
        if (b >= 3) idx[1] = cache_rows + 5;
    }
    const float dt_min = on('l') ? 0.05f : 0.0f, dt_max = on('l') ? 2.0f : INFINITY;

    std::vector<elem_t> out((size_t)b * H * P, from_f32<elem_t>(std::nanf("")));
    Mamba2DecodeArgs a{};
    a.x = x.data();
    a.dt = dt.data();
    a.A = A.data();
    a.B = B.data();
    a.C = C.data();
    a.D = on('e') ? Dhp.data() : (on('d') ? Dh.data() : nullptr);
    a.z = on('z') ? z.data() : nullptr;
    a.dt_bias = on('a') ? bias.data() : nullptr;
    a.state_batch_indices = on('i') ? idx.data() : nullptr;
    a.state = state.data();
    a.out = out.data();
    a.batch = b;
    a.heads = H;
    a.head_dim = P;
    a.groups = G;
    a.cache_rows = cache_rows;
    a.dt_min = dt_min;
    a.dt_max = dt_max;
    a.dt_softplus = on('s');
    a.d_per_head_dim = on('e');
    const unsigned tiles = (unsigned)((P + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    run(a, (unsigned)(b * H) * tiles);

    // The f64 step on the same (rounded) inputs.
    std::vector<double> ref_out, got_out, ref_state, got_state;
    int failures = 0;
    std::vector<bool> written(cache_rows, false);
    for (int i = 0; i < b; ++i) {
        const long long c = on('i') ? idx[i] : i;
        for (int h = 0; h < H; ++h) {
            const size_t bh = (size_t)i * H + h;
            if (c < 0 || c >= cache_rows) {
                for (int p = 0; p < P; ++p) {
                    const float y = to_f32(out[bh * P + p]);
                    const bool ok = c < 0 ? (y == 0.0f && !std::signbit(y)) : std::isnan(y);
                    if (!ok && failures++ < 5)
                        std::fprintf(stderr, "row %d (cache %lld) h %d p %d: %g\n", i, c, h, p, y);
                }
                continue;
            }
            written[c] = true;
            double d = to_f32(dt[bh]);
            if (on('a')) d += bias[h];
            if (on('s')) d = d > 20 ? d : std::log1p(std::exp(d));
            d = std::min(std::max(d, (double)dt_min), (double)dt_max);
            const double decay = std::exp(d * A[h]);
            const int g = h / (H / G);
            for (int p = 0; p < P; ++p) {
                const double xv = to_f32(x[bh * P + p]);
                double y = 0;
                for (int n = 0; n < N; ++n) {
                    const size_t at = (((size_t)c * H + h) * P + p) * N + n;
                    const double s = decay * to_f32(state0[at]) +
                                     d * xv * to_f32(B[((size_t)i * G + g) * N + n]);
                    y += s * to_f32(C[((size_t)i * G + g) * N + n]);
                    ref_state.push_back(s);
                    got_state.push_back(to_f32(state[at]));
                }
                if (a.D) y += (on('e') ? Dhp[(size_t)h * P + p] : Dh[h]) * xv;
                if (a.z) {
                    const double zv = to_f32(z[bh * P + p]);
                    y *= zv / (1 + std::exp(-zv));
                }
                ref_out.push_back(y);
                got_out.push_back(to_f32(out[bh * P + p]));
            }
        }
    }
    for (int c = 0; c < cache_rows; ++c) {
        if (written[c]) continue;
        const size_t n = (size_t)H * P * N;
        if (std::memcmp(&state[c * n], &state0[c * n], n * sizeof(state_t)) != 0) {
            std::fprintf(stderr, "cache row %d is not pointed at but changed\n", c);
            ++failures;
        }
    }
    const double out_err = rel_l2(ref_out, got_out), state_err = rel_l2(ref_state, got_state);
    const double out_budget = EMU_DTYPE == 0 ? 1e-5 : 5e-3;
    // One stored rounding of a 16-bit state: u = 2^-11 (f16) or 2^-8 (bf16).
    const double state_budget = DECODE_STATE_DTYPE == 0   ? 1e-5
                                : DECODE_STATE_DTYPE == 1 ? 1e-5 + std::ldexp(1.0, -11)
                                                          : 1e-5 + std::ldexp(1.0, -8);
    std::printf("out rel L2 %.3e (budget %.0e), state (%s) rel L2 %.3e (budget %.1e), %d bad elements\n",
                out_err, out_budget,
                DECODE_STATE_DTYPE == 0 ? "f32" : (DECODE_STATE_DTYPE == 1 ? "f16" : "bf16"), state_err,
                state_budget, failures);
    if (!(out_err <= out_budget) || !(state_err <= state_budget) || failures) return 1;
    return 0;
}
