//! The CUDA backward of the selective scan (`kernels/mamba1/scan_bwd.cu`)
//! against the f64 adjoint (`ssm_reference::mamba1_backward`), on fresh random
//! inputs with poisoned outputs, within the derived budgets of
//! `mamba1_scan::backward_cpu::tolerance` (docs/TOLERANCES.md). Skips loudly
//! without a GPU (`SSM_REQUIRE_GPU=1` turns the skip into a failure).
//!
//! - every option combination in f32, f16 and bf16, grouped and constant B/C
//!   with independent group counts, N = 1 .. 256, L = 1 and unaligned L;
//! - varlen with per-sequence states (an empty and a one-step sequence);
//! - reruns are bit-identical (no atomics);
//! - every variant of `BwdOptions` (the training forward's checkpoints, the
//!   decays kept or recomputed, ...) gives its family's gradients bit for bit
//!   (the slice-major sweep's and the lanes sweep's), in the option sweep and
//!   on the corner shapes;
//! - offsets past 2^31 elements (`SSM_GPU_BIG=1`: 12 GiB of device memory).

use half::{bf16, f16};
use mamba1_scan::backward_cpu::tolerance::judge_all;
use mamba1_scan::cuda::{
    selective_scan_backward_cuda, selective_scan_backward_cuda_with, BwdOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::{ScanGrads, SsmError};
use ssm_gpu::{test_gpu_or_skip, DeviceElement, Gpu};
use ssm_reference::mamba1_backward::{selective_scan_backward, selective_scan_backward_magnitudes};

#[path = "support/scan_backward.rs"]
mod support;
use support::{Case, Data, Rounded};

/// Run the CUDA backward on `case` in `T` and judge every gradient; returns
/// the gradients for determinism checks.
fn check<T: DeviceElement>(gpu: &Gpu, name: &str, case: &Case, seed: u64) -> ScanGrads<T, f32> {
    check_with(gpu, name, case, seed, BwdOptions::default())
}

/// The variants of the backward in families of the same arithmetic in the
/// same order: each family's first member is its base, and every other member
/// must give the base's gradients bit for bit. The slice-major sweep (v5, the
/// default at N <= 32) and the lanes sweep (v3b) sum in different orders, so
/// they are two families, each judged against the adjoint.
fn variant_families() -> Vec<Vec<(&'static str, BwdOptions)>> {
    let ckfwd = BwdOptions {
        forward_checkpoints: true,
        ..BwdOptions::default()
    };
    let keep = |k: bool| BwdOptions {
        keep_decays: Some(k),
        ..BwdOptions::default()
    };
    let lanes = BwdOptions {
        lanes_sweep: true,
        ..BwdOptions::default()
    };
    let six = BwdOptions {
        six_blocks: true,
        ..lanes
    };
    vec![
        vec![
            ("default", BwdOptions::default()),
            ("forward checkpoints", ckfwd),
            ("decays kept", keep(true)),
            ("decays recomputed", keep(false)),
        ],
        vec![
            ("lanes sweep", lanes),
            (
                "lanes sweep, forward checkpoints",
                BwdOptions {
                    forward_checkpoints: true,
                    ..lanes
                },
            ),
            ("lanes sweep, six blocks", six),
            (
                "lanes sweep, forward checkpoints, six blocks",
                BwdOptions {
                    forward_checkpoints: true,
                    ..six
                },
            ),
        ],
    ]
}

/// [`check`] of every variant: each judged, and each bit-identical to its
/// family's base.
fn check_variants<T: DeviceElement>(gpu: &Gpu, name: &str, case: &Case, seed: u64) {
    for family in variant_families() {
        let (base_name, base_options) = family[0];
        let base = grad_bits(&check_with::<T>(
            gpu,
            &format!("{name} [{base_name}]"),
            case,
            seed,
            base_options,
        ));
        for &(what, options) in &family[1..] {
            let got = check_with::<T>(gpu, &format!("{name} [{what}]"), case, seed, options);
            assert!(
                grad_bits(&got) == base,
                "{name} ({}) [{what}]: the gradients differ in some bit from [{base_name}]'s",
                T::DTYPE
            );
        }
    }
}

/// Every gradient's bits, in one vector.
fn grad_bits<T: DeviceElement>(g: &ScanGrads<T, f32>) -> Vec<u64> {
    let mut v: Vec<u64> = Vec::new();
    for x in [&g.du, &g.ddelta, &g.db, &g.dc]
        .into_iter()
        .chain(g.dz.as_ref())
    {
        v.extend(x.iter().map(|e| e.to_f64().to_bits()));
    }
    v.extend(g.da.iter().map(|x| u64::from(x.to_bits())));
    for p in [&g.dd, &g.ddelta_bias, &g.dinitial_states]
        .into_iter()
        .flatten()
    {
        v.extend(p.iter().map(|x| u64::from(x.to_bits())));
    }
    v
}

fn check_with<T: DeviceElement>(
    gpu: &Gpu,
    name: &str,
    case: &Case,
    seed: u64,
    options: BwdOptions,
) -> ScanGrads<T, f32> {
    let data = Data::generate(case, seed);
    let r = Rounded::<T>::new(&data);
    let p = r.params(case, &data);
    let dh = case.final_states.then_some(&data.d_final[..]);
    let got = selective_scan_backward_cuda_with(gpu, &p, &r.d_out, dh, options)
        .unwrap_or_else(|e| panic!("{name} ({}): {e}", T::DTYPE));
    let want = selective_scan_backward(&p, &r.d_out, dh).unwrap();
    let mag = selective_scan_backward_magnitudes(&p, &r.d_out, dh).unwrap();
    let mut failed = Vec::new();
    for v in judge_all(&p, &got, &want, &mag) {
        println!(
            "{name:<28} {:<5} {:<16} rel_l2 {:>10.3e}  budget {:>9.2e}  {}",
            T::DTYPE.name(),
            v.name,
            v.comparison.rel_l2,
            v.budget,
            if v.passes { "ok" } else { "FAILED" }
        );
        if !v.passes {
            failed.push(format!("{}: {:?}", v.name, v.comparison));
        }
    }
    assert!(failed.is_empty(), "{name} ({}): {failed:?}", T::DTYPE);
    got
}

fn all_dtypes(gpu: &Gpu, name: &str, case: &Case, seed: u64) {
    check::<f32>(gpu, name, case, seed);
    check::<f16>(gpu, name, case, seed);
    check::<bf16>(gpu, name, case, seed);
}

#[test]
fn every_option_combination_matches_the_adjoint() {
    let Some(gpu) = test_gpu_or_skip("every_option_combination_matches_the_adjoint") else {
        return;
    };
    for mask in 0u32..64 {
        let bit = |k: u32| mask & (1 << k) != 0;
        let mut c = Case::all(2, 40, 16, 203);
        c.d = bit(0);
        c.z = bit(1);
        c.bias = bit(2);
        c.softplus = bit(3);
        c.h0 = bit(4);
        c.final_states = bit(5);
        let name = format!("options {mask:06b}");
        // All dtypes for a few, f32 and bf16 for the rest (the budgets differ).
        if mask % 9 == 0 {
            all_dtypes(&gpu, &name, &c, 100 + u64::from(mask));
        } else {
            check::<bf16>(&gpu, &name, &c, 100 + u64::from(mask));
        }
        // Every variant, bit for bit the default (bf16: the trained setting),
        // on every seventh combination and all options (each variant is two
        // more NVRTC compiles per combination).
        if mask % 7 == 0 || mask == 63 {
            check_variants::<bf16>(&gpu, &name, &c, 100 + u64::from(mask));
        }
    }
}

#[test]
fn variants_match_the_default_bit_for_bit_on_corner_shapes() {
    let Some(gpu) = test_gpu_or_skip("variants_match_the_default_bit_for_bit_on_corner_shapes")
    else {
        return;
    };
    let mut cases = Vec::new();
    for (n, l) in [(1, 37), (5, 1), (16, 4096), (16, 333), (96, 65), (256, 40)] {
        cases.push((format!("N {n} L {l}"), Case::all(2, 24, n, l)));
    }
    let mut c = Case::all(2, 72, 16, 517);
    c.b_groups = None;
    c.c_groups = Some(3);
    cases.push(("B const, C 3 groups".into(), c));
    for lens in [vec![100i64, 0, 1, 250, 33], vec![0, 64, 64, 1]] {
        cases.push((format!("varlen {lens:?}"), varlen_case(&lens)));
    }
    for (i, (name, c)) in cases.iter().enumerate() {
        check_variants::<bf16>(&gpu, name, c, 300 + i as u64);
        // f32 on the M1 shape and the varlen cases.
        if name.starts_with("N 16 L 4096") || name.starts_with("varlen") {
            check_variants::<f32>(&gpu, name, c, 300 + i as u64);
        }
    }
}

/// Every option, 48 channels, B in 2 groups, one varlen sequence per length.
fn varlen_case(lens: &[i64]) -> Case {
    let total: i64 = lens.iter().sum();
    let mut c = Case::all(1, 48, 16, total as usize);
    c.b_groups = Some(2);
    let mut cu = vec![0i64];
    for l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    c.cu = Some(cu);
    c
}

#[test]
fn layouts_and_shapes_match_the_adjoint() {
    let Some(gpu) = test_gpu_or_skip("layouts_and_shapes_match_the_adjoint") else {
        return;
    };
    let mut cases = Vec::new();
    for (n, l) in [
        (1, 37),
        (5, 1),
        (16, 4096),
        (7, 129),
        (64, 300),
        (96, 65),
        (256, 40),
    ] {
        cases.push((format!("N {n} L {l}"), Case::all(2, 24, n, l)));
    }
    for (gb, gc) in [
        (None, None),
        (None, Some(3)),
        (Some(4), None),
        (Some(2), Some(3)),
    ] {
        let mut c = Case::all(2, 72, 16, 517);
        c.b_groups = gb;
        c.c_groups = gc;
        cases.push((format!("B {gb:?} C {gc:?}"), c));
    }
    // Channels past several blocks of one group, and large steps.
    let mut c = Case::all(1, 300, 16, 1000);
    c.large_dt = true;
    cases.push(("300 channels, dt up to 10".into(), c));
    for (i, (name, c)) in cases.iter().enumerate() {
        all_dtypes(&gpu, name, c, 7 + i as u64);
    }
}

#[test]
fn varlen_with_per_sequence_states_matches_the_adjoint() {
    let Some(gpu) = test_gpu_or_skip("varlen_with_per_sequence_states_matches_the_adjoint") else {
        return;
    };
    for (i, lens) in [vec![100i64, 0, 1, 250, 33], vec![17], vec![0, 64, 64, 1]]
        .into_iter()
        .enumerate()
    {
        all_dtypes(
            &gpu,
            &format!("varlen {lens:?}"),
            &varlen_case(&lens),
            40 + i as u64,
        );
    }
}

#[test]
fn reruns_are_bit_identical() {
    let Some(gpu) = test_gpu_or_skip("reruns_are_bit_identical") else {
        return;
    };
    let c = Case::all(2, 256, 16, 2000);
    let first = check::<bf16>(&gpu, "rerun 1", &c, 5);
    for k in 2..=4 {
        let again = check::<bf16>(&gpu, &format!("rerun {k}"), &c, 5);
        let bits = |g: &ScanGrads<bf16, f32>| {
            let mut v: Vec<u32> = Vec::new();
            v.extend(
                g.du.iter()
                    .chain(&g.ddelta)
                    .chain(&g.db)
                    .chain(&g.dc)
                    .map(|x| u32::from(x.to_bits())),
            );
            v.extend(g.da.iter().map(|x| x.to_bits()));
            for p in [&g.dd, &g.ddelta_bias, &g.dinitial_states]
                .into_iter()
                .flatten()
            {
                v.extend(p.iter().map(|x| x.to_bits()));
            }
            v
        };
        assert!(
            bits(&first) == bits(&again),
            "rerun {k} differs in some bit"
        );
    }
}

#[test]
fn bad_gradient_shapes_are_typed_errors() {
    let Some(gpu) = test_gpu_or_skip("bad_gradient_shapes_are_typed_errors") else {
        return;
    };
    let c = Case::all(1, 8, 4, 10);
    let data = Data::generate(&c, 1);
    let r = Rounded::<f32>::new(&data);
    let p = r.params(&c, &data);
    let short = &r.d_out[..r.d_out.len() - 1];
    match selective_scan_backward_cuda(&gpu, &p, short, None) {
        Err(SsmError::Shape { arg: "d_out", .. }) => {}
        other => panic!("short d_out: {:?}", other.err()),
    }
    let mut big = Case::all(1, 8, 300, 10);
    big.h0 = false;
    let data = Data::generate(&big, 1);
    let r = Rounded::<f32>::new(&data);
    let p = r.params(&big, &data);
    match selective_scan_backward_cuda(&gpu, &p, &r.d_out, None) {
        Err(SsmError::Unsupported { .. }) => {}
        other => panic!("N = 300: {:?}", other.err()),
    }
}

/// Constant B and C, softplus and the gate z over `[u, delta, B, C, z]`.
fn gated_constant_bc<'a>(
    dims: Mamba1Dims,
    a: &'a [f32],
    [u, delta, b, c, z]: [&'a [bf16]; 5],
) -> SelectiveScanParams<'a, bf16> {
    let mut p = SelectiveScanParams::new(
        dims,
        u,
        delta,
        a,
        BcInput::Constant(b),
        BcInput::Constant(c),
    )
    .with_delta_softplus(true);
    p.z = Some(z);
    p
}

/// Offsets past 2^31 elements: b 1, D_in 2^19 + 64, L 4096 (2^31 + 2^18
/// elements per tensor, bf16), constant B/C so that channels are independent.
/// The last 64 channels are judged against the adjoint of those channels alone.
#[test]
fn offsets_past_2_pow_31() {
    let Some(gpu) = test_gpu_or_skip("offsets_past_2_pow_31") else {
        return;
    };
    if std::env::var("SSM_GPU_BIG").map_or(true, |v| v != "1") {
        eprintln!("SKIPPED offsets_past_2_pow_31: set SSM_GPU_BIG=1 (needs about 30 GiB of device memory)");
        return;
    }
    let (d_inner, n, l) = ((1usize << 19) + 64, 4usize, 4096usize);
    let keep = 64;
    let mut rng = StdRng::seed_from_u64(31);
    let io = d_inner * l;
    assert!(io > 1 << 31);
    // Cheap random inputs (a 64-bit LCG per tensor: 8.6e9 draws in seconds).
    let mut draw = |len: usize, lo: f32, hi: f32| -> Vec<bf16> {
        let mut x: u64 = rng.random();
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = (x >> 40) as f32 / (1u64 << 24) as f32;
                bf16::from_f32(lo + (hi - lo) * unit)
            })
            .collect()
    };
    let u = draw(io, -1.0, 1.0);
    let delta = draw(io, -4.0, 0.0);
    let d_out = draw(io, -1.0, 1.0);
    let z = draw(io, -2.0, 2.0);
    let bmat = draw(d_inner * n, -1.0, 1.0);
    let cmat = draw(d_inner * n, -1.0, 1.0);
    let a: Vec<f32> = (0..d_inner * n)
        .map(|i| -0.5 - (i % 7) as f32 * 0.25)
        .collect();
    let p = gated_constant_bc(
        Mamba1Dims::new(1, d_inner, n, l),
        &a,
        [&u, &delta, &bmat, &cmat, &z],
    );
    let got = selective_scan_backward_cuda(&gpu, &p, &d_out, None).unwrap();
    // The last `keep` channels as their own problem.
    let lo = d_inner - keep;
    let tail = |x: &[bf16], per: usize| x[lo * per..].to_vec();
    let (u2, delta2, dout2, z2) = (tail(&u, l), tail(&delta, l), tail(&d_out, l), tail(&z, l));
    let (b2, c2, a2) = (tail(&bmat, n), tail(&cmat, n), a[lo * n..].to_vec());
    let q = gated_constant_bc(
        Mamba1Dims::new(1, keep, n, l),
        &a2,
        [&u2, &delta2, &b2, &c2, &z2],
    );
    let want = selective_scan_backward(&q, &dout2, None).unwrap();
    let mag = selective_scan_backward_magnitudes(&q, &dout2, None).unwrap();
    let got_tail = ScanGrads {
        du: tail(&got.du, l),
        ddelta: tail(&got.ddelta, l),
        da: got.da[lo * n..].to_vec(),
        db: tail(&got.db, n),
        dc: tail(&got.dc, n),
        dd: None,
        dz: got.dz.as_ref().map(|dz| tail(dz, l)),
        ddelta_bias: None,
        dinitial_states: None,
    };
    for v in judge_all(&q, &got_tail, &want, &mag) {
        println!(
            "past 2^31 {:<16} rel_l2 {:.3e} budget {:.2e}",
            v.name, v.comparison.rel_l2, v.budget
        );
        assert!(v.passes, "past 2^31: {}: {:?}", v.name, v.comparison);
    }
}
