// Host program (not a kernel): runs the six kernels of ssd_bwd.cu under the CPU
// emulation of ssd_emu.cuh (one fiber per CUDA thread) on a problem read from a
// file and writes every gradient to another. Built and driven by
// crates/mamba2-ssd/tests/emulated_backward.rs, which writes the problem and
// compares the gradients with the f32 CPU port (backward_cpu.rs).
//
// Build: g++ -std=c++20 -I kernels -include kernels/mamba2/ssd_emu.cuh
//        kernels/mamba2/ssd_bwd_emu_check.cu -DSSD_DTYPE=0|1|2 -DSSD_Q=.. (all defines)
// Usage: ssd_bwd_emu_check IN OUT
//   IN: i64 H, G, nseqs, then nseqs sequence lengths; f32 dt_min, dt_max; then f32
//   arrays x, dt, A, B, C, [dt_bias], [D], [z], [s0], dout, [dfinal] (bracketed:
//   when the defines say so). OUT: f32 dx, ddt, dA, dB, dC, [dD], [dz],
//   [ddt_bias], [dinit].
// Windows of two chunks in ssd_bwd_pass: the test's sequences of a few chunks
// cross windows, partial ones included, in both directions.
#define SSD_BWD_PASS_WINDOW 2
#include "mamba2/ssd_bwd.cu"

#include <cstdio>
#include <vector>

// Files hold f32; with SSD_DTYPE 1 or 2 the tensor inputs are converted to the
// 16-bit type (the caller sends values already rounded to it, so exactly) and the
// 16-bit gradients are widened back on output.
static std::vector<elem_t> to_elem(const std::vector<float>& v) {
    std::vector<elem_t> e(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
#if SSD_DTYPE == 0
        e[i] = v[i];
#else
        e[i] = f32_to_elem16(v[i]);
#endif
    }
    return e;
}
static std::vector<float> widen_all(const std::vector<elem_t>& e) {
    std::vector<float> v(e.size());
    for (size_t i = 0; i < e.size(); ++i) v[i] = elem_to_f32(e[i]);
    return v;
}

static std::vector<float> read_f32(FILE* f, size_t n) {
    std::vector<float> v(n);
    if (n && std::fread(v.data(), 4, n, f) != n) {
        std::fprintf(stderr, "short input\n");
        std::exit(2);
    }
    return v;
}
static void write_f32(FILE* f, const std::vector<float>& v) {
    if (!v.empty()) std::fwrite(v.data(), 4, v.size(), f);
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
        return 2;
    }
    FILE* in = std::fopen(argv[1], "rb");
    if (!in) return 2;
    i64 hdr[3];
    if (std::fread(hdr, 8, 3, in) != 3) return 2;
    const int H = (int)hdr[0], G = (int)hdr[1], S = (int)hdr[2];
    std::vector<i64> lens(S);
    if (std::fread(lens.data(), 8, S, in) != (size_t)S) return 2;
    float lim[2];
    if (std::fread(lim, 4, 2, in) != 2) return 2;
    constexpr int P = SSD_P, N = SSD_N, Q = SSD_Q;
    i64 T = 0;
    for (i64 l : lens) T += l;
    const size_t io = (size_t)(T * H * P), bc = (size_t)(T * G * N), st = (size_t)S * H * P * N;
    auto x = read_f32(in, io), dt = read_f32(in, (size_t)(T * H)), A = read_f32(in, H);
    auto B = read_f32(in, bc), C = read_f32(in, bc);
    std::vector<float> bias, D, z, s0, dfinal;
    if (SSD_DT_BIAS) bias = read_f32(in, H);
    if (SSD_D_MODE == 1) D = read_f32(in, H);
    if (SSD_D_MODE == 2) D = read_f32(in, (size_t)H * P);
    if (SSD_HAS_Z) z = read_f32(in, io);
    if (SSD_HAS_S0) s0 = read_f32(in, st);
    auto dout = read_f32(in, io);
    if (SSD_HAS_DFINAL) dfinal = read_f32(in, st);
    std::fclose(in);
    const auto ex = to_elem(x), edt = to_elem(dt), eB = to_elem(B), eC = to_elem(C), ez = to_elem(z),
               edout = to_elem(dout);
    // The chunk and sequence tables, as crates/mamba2-ssd/src/cuda/backward.rs builds them.
    std::vector<i64> chunks, seqs;
    i64 tok = 0;
    for (i64 l : lens) {
        seqs.push_back((i64)chunks.size() / 2);
        seqs.push_back((l + Q - 1) / Q);
        for (i64 c = 0; c < l; c += Q) {
            chunks.push_back(tok + c);
            chunks.push_back(l - c < Q ? l - c : Q);
        }
        tok += l;
    }
    const i64 K = (i64)chunks.size() / 2;
    const size_t Kq = (size_t)(K > 0 ? K : 1);
    std::vector<elem_t> dx(io), ddt((size_t)(T * H)), dB(bc), dC(bc), dz(z.size());
    std::vector<float> dA(H), dD(D.size()), dbias(bias.size()), dinit(s0.size());
    std::vector<float> ws_dt((size_t)(T * H)), ws_cum((size_t)(T * H)), ws_dy(io);
    std::vector<float> ws_S(Kq * H * P * N), ws_G(Kq * H * P * N), ws_cb(Kq * G * Q * Q);
    std::vector<float> ws_gx(Kq * H * Q * Q), ws_sc(io), ws_gb(io);
    std::vector<float> ws_dbh((size_t)(T * H * N)), ws_dch((size_t)(T * H * N));
    std::vector<float> ws_part(Kq * H * (2 + P));
    // Poison everything the kernels write: an unwritten read shows as NaN.
    for (auto* v : {&dA, &dD, &dbias, &dinit, &ws_dt, &ws_cum, &ws_dy, &ws_S, &ws_G, &ws_cb,
                    &ws_gx, &ws_sc, &ws_gb, &ws_dbh, &ws_dch, &ws_part})
        for (auto& e : *v) e = NAN;
    const auto nan_elem = to_elem(std::vector<float>(1, NAN))[0];
    for (auto* v : {&dx, &ddt, &dB, &dC, &dz})
        for (auto& e : *v) e = nan_elem;
    auto opt = [](std::vector<float>& v) { return v.empty() ? nullptr : v.data(); };
    auto opt_e = [](const std::vector<elem_t>& v) { return v.empty() ? nullptr : v.data(); };
    auto mut_e = [](std::vector<elem_t>& v) { return v.empty() ? nullptr : v.data(); };
    SsdBwdArgs a{ex.data(), edt.data(), A.data(), eB.data(), eC.data(), opt(bias), opt(D), opt_e(ez),
                 opt(s0), edout.data(), opt(dfinal), dx.data(), ddt.data(), dB.data(), dC.data(),
                 mut_e(dz), dA.data(), opt(dbias), opt(dD), opt(dinit), ws_dt.data(), ws_cum.data(),
                 ws_dy.data(), ws_S.data(), ws_G.data(), ws_cb.data(), ws_gx.data(), ws_sc.data(),
                 ws_gb.data(), ws_dbh.data(), ws_dch.data(), ws_part.data(), chunks.data(),
                 seqs.data(), K, T, H, G, S, 0, lim[0], lim[1]};
#if SSD_BWD_TILED
    const size_t smem = ssd_bwd3::GRAD_SMEM_BYTES > ssd_bwd3::CHUNK_SMEM_BYTES
                            ? ssd_bwd3::GRAD_SMEM_BYTES
                            : ssd_bwd3::CHUNK_SMEM_BYTES;
#else
    const size_t smem = (6 * Q + 256) * 4;
#endif
    const unsigned nt = 256;
    if (K > 0) {
        emu::launch((unsigned)(K * H), nt, smem, [&] { ssd_bwd_chunk(a); });
        emu::launch((unsigned)(K * G), nt, smem, [&] { ssd_bwd_cb(a); });
    }
    // A few slices of the state elements, at least two where there are that many
    // (any count is valid: the kernel reads it from the grid).
    const i64 slices = (i64)P * N > 256 ? 3 : 1;
    emu::launch((unsigned)(S * H * slices), nt, smem, [&] { ssd_bwd_pass(a); });
    if (K > 0) emu::launch((unsigned)(K * H), nt, smem, [&] { ssd_bwd_grad(a); });
    const i64 bce = T * G * N;
    emu::launch((unsigned)((bce + nt - 1) / nt > 0 ? (bce + nt - 1) / nt : 1), nt, smem,
                [&] { ssd_bwd_reduce_bc(a); });
    emu::launch((unsigned)H, nt, smem, [&] { ssd_bwd_reduce_params(a); });

    FILE* out = std::fopen(argv[2], "wb");
    if (!out) return 2;
    write_f32(out, widen_all(dx));
    write_f32(out, widen_all(ddt));
    write_f32(out, dA);
    write_f32(out, widen_all(dB));
    write_f32(out, widen_all(dC));
    write_f32(out, dD);
    write_f32(out, widen_all(dz));
    for (auto* v : {&dbias, &dinit}) write_f32(out, *v);
    std::fclose(out);
    return 0;
}
