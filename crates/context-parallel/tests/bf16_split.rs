//! bf16 inputs and outputs through the context-parallel calls on CPU thread
//! ranks: split == whole within twice the bf16 budget, one rank bit for bit,
//! for the SSD (varlen, a sequence over three ranks) and the scan (constant B,
//! whose gradient is summed over ranks in f32 and stored in bf16).

mod support;

use half::bf16;
use ssm_context_parallel::{
    scan_backward_cp, scan_forward_cp, ssd_backward_cp, ssd_forward_cp, Communicator, CpOptions,
    Segment, ThreadComm,
};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::tolerance::{compare, rel_l2_budget};
use ssm_core::DType;
use support::*;

fn assert_close(what: &str, split: &[bf16], whole: &[bf16]) {
    let c = compare(&widen(split), &widen(whole));
    let budget = 2.0 * rel_l2_budget(DType::Bf16, 0.0);
    assert!(c.passes(budget), "{what}: {c:?} over {budget:e}");
}

/// The SSD over the bf16 tensors `[x, dt, B, C, z]`, with D per head,
/// softplus and final states.
fn ssd_params<'a>(
    dims: SsdDims,
    [x, dt, b, c, z]: [&'a [bf16]; 5],
    a: &'a [f32],
    d: &'a [f32],
) -> SsdParams<'a, bf16> {
    SsdParams::new(dims, x, dt, a, b, c)
        .with_z(z)
        .with_d(DSkip::PerHead(d))
        .with_dt_softplus(true)
        .with_final_states(true)
}

/// The scan over the bf16 tensors `[u, delta, B, C]`, B constant and C one
/// group, with softplus.
fn scan_params<'a>(
    dims: Mamba1Dims,
    [u, delta, b_const, c]: [&'a [bf16]; 4],
    a: &'a [f32],
) -> SelectiveScanParams<'a, bf16> {
    SelectiveScanParams::new(
        dims,
        u,
        delta,
        a,
        BcInput::Constant(b_const),
        BcInput::Grouped { groups: 1, data: c },
    )
    .with_delta_softplus(true)
}

#[test]
fn ssd_bf16_split_equals_whole() {
    let mut r = rng(42);
    let (len, h, p, n) = (57, 2, 4, 6);
    let dims = SsdDims::new(1, len, h, p, n, 1);
    let x = cast::<bf16>(randn(&mut r, len * h * p));
    let dt = cast::<bf16>(uniform(&mut r, len * h, 0.0, 0.5));
    let a = vec![-0.7f32, -1.3];
    let b = cast::<bf16>(randn(&mut r, len * n));
    let c = cast::<bf16>(randn(&mut r, len * n));
    let z = cast::<bf16>(randn(&mut r, len * h * p));
    let d = randn(&mut r, h);
    let cu = [0i64, 5, 50, 57];
    let init = randn(&mut r, 3 * h * p * n);
    let d_out = cast::<bf16>(randn(&mut r, len * h * p));
    let d_final = randn(&mut r, 3 * h * p * n);
    let segs = [(0, 20), (20, 40), (40, 57)];
    let chunk = mamba2_ssd::Backend::Cpu(mamba2_ssd::CpuOptions { chunk_size: 8 });
    let whole_p = ssd_params(dims, [&x, &dt, &b, &c, &z], &a, &d)
        .with_cu_seqlens(&cu)
        .with_initial_states(&init);
    let whole = mamba2_ssd::ssd_forward(&whole_p, chunk).unwrap();
    let whole_g = mamba2_ssd::ssd_backward(&whole_p, &d_out, Some(&d_final), chunk).unwrap();
    for ranks in [1usize, 3] {
        let segs: Vec<(usize, usize)> = if ranks == 1 {
            vec![(0, len)]
        } else {
            segs.to_vec()
        };
        let res = ThreadComm::run(ranks, |comm| {
            let (lo, hi) = segs[comm.rank()];
            let cut = |v: &[bf16], per| slice_tokens(v, 1, len, per, lo, hi);
            let (lx, ldt, lb, lc, lz, ld) = (
                cut(&x, h * p),
                cut(&dt, h),
                cut(&b, n),
                cut(&c, n),
                cut(&z, h * p),
                cut(&d_out, h * p),
            );
            let ldims = SsdDims {
                seqlen: hi - lo,
                ..dims
            };
            let lp = ssd_params(ldims, [&lx, &ldt, &lb, &lc, &lz], &a, &d);
            let seg = Segment::new(lo, len)
                .with_cu_seqlens(&cu)
                .with_initial_states(&init);
            let f = ssd_forward_cp(&lp, &seg, comm, chunk, CpOptions::default()).unwrap();
            let g = ssd_backward_cp(
                &lp,
                &seg,
                &ld,
                Some(&d_final),
                comm,
                chunk,
                CpOptions::default(),
            )
            .unwrap();
            (f, g)
        });
        let out: Vec<Vec<bf16>> = res.iter().map(|(f, _)| f.out.clone()).collect();
        let out = join_tokens(&out, &segs, 1, h * p);
        let dx: Vec<Vec<bf16>> = res.iter().map(|(_, g)| g.dx.clone()).collect();
        let dx = join_tokens(&dx, &segs, 1, h * p);
        if ranks == 1 {
            assert_eq!(res[0].0, whole);
            assert_eq!(res[0].1, whole_g);
        } else {
            assert_close("out", &out, &whole.out);
            assert_close("dx", &dx, &whole_g.dx);
            let fs = compare(
                &widen(res[0].0.final_states.as_ref().unwrap()),
                &widen(whole.final_states.as_ref().unwrap()),
            );
            assert!(fs.passes(2.0 * f32_budget(0.0)), "final states {fs:?}");
        }
    }
}

#[test]
fn scan_bf16_with_constant_b_split_equals_whole() {
    let mut r = rng(43);
    let (batch, d_in, n, len) = (2, 4, 3, 45);
    let dims = Mamba1Dims::new(batch, d_in, n, len);
    let rows = batch * d_in;
    let u = cast::<bf16>(randn(&mut r, rows * len));
    let delta = cast::<bf16>(uniform(&mut r, rows * len, 0.0, 0.5));
    let a = decay_rates(&mut r, d_in * n);
    let b_const = cast::<bf16>(randn(&mut r, d_in * n));
    let c = cast::<bf16>(randn(&mut r, batch * n * len));
    let init = randn(&mut r, rows * n);
    let d_out = cast::<bf16>(randn(&mut r, rows * len));
    let backend = mamba1_scan::Backend::Cpu(mamba1_scan::CpuOptions { block_len: 7 });
    let whole_p = scan_params(dims, [&u, &delta, &b_const, &c], &a).with_initial_states(&init);
    let whole = mamba1_scan::selective_scan(&whole_p, backend).unwrap();
    let whole_g = mamba1_scan::selective_scan_backward(&whole_p, &d_out, None, backend).unwrap();
    let segs = [(0, 15), (15, 15), (15, 45)];
    let res = ThreadComm::run(3, |comm| {
        let (lo, hi) = segs[comm.rank()];
        let (lu, ld, lc, lg) = (
            slice_time(&u, rows, len, lo, hi),
            slice_time(&delta, rows, len, lo, hi),
            slice_time(&c, batch * n, len, lo, hi),
            slice_time(&d_out, rows, len, lo, hi),
        );
        let ldims = Mamba1Dims {
            seqlen: hi - lo,
            ..dims
        };
        let lp = scan_params(ldims, [&lu, &ld, &b_const, &lc], &a);
        let seg = Segment::new(lo, len).with_initial_states(&init);
        let f = scan_forward_cp(&lp, &seg, comm, backend, CpOptions::default()).unwrap();
        let g =
            scan_backward_cp(&lp, &seg, &lg, None, comm, backend, CpOptions::default()).unwrap();
        (f, g)
    });
    let out: Vec<Vec<bf16>> = res.iter().map(|(f, _)| f.out.clone()).collect();
    assert_close("out", &join_time(&out, &segs, rows), &whole.out);
    for (_, g) in &res {
        assert_eq!(g.db, res[0].1.db, "constant dB is the same on every rank");
    }
    assert_close("constant dB", &res[0].1.db, &whole_g.db);
    let du: Vec<Vec<bf16>> = res.iter().map(|(_, g)| g.du.clone()).collect();
    assert_close("du", &join_time(&du, &segs, rows), &whole_g.du);
}
