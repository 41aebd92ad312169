//! The context-parallel Mamba-1 selective scan on CPU thread ranks == the
//! whole sequence on one "device" (the CPU port), forward and backward, for
//! random rank counts (1..=5), segment boundaries anywhere, grouped or constant
//! B/C and every option; one rank == the plain call bit for bit. 48 cases per
//! property by default, `SSM_PROPTEST_CASES=N` for more.

mod support;

use mamba1_scan::{selective_scan, selective_scan_backward, Backend, CpuOptions};
use proptest::prelude::*;
use ssm_context_parallel::{
    scan_backward_cp, scan_forward_cp, Communicator, CpError, Exchange, Segment, ThreadComm,
};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::ScanGrads;
use support::*;

#[derive(Clone, Debug)]
struct Spec {
    batch: usize,
    len: usize,
    d_inner: usize,
    d_state: usize,
    /// `Some(G)`: grouped B (C) with G groups; `None`: constant.
    b_groups: Option<usize>,
    c_groups: Option<usize>,
    varlen: Option<usize>,
    d: bool,
    z: bool,
    bias: bool,
    softplus: bool,
    init: bool,
    fin: bool,
    d_final: bool,
    block: usize,
    ranks: usize,
    exchange: Exchange,
    /// The forward's pass 2.
    add: bool,
    seed: u64,
}

fn groups() -> impl Strategy<Value = Option<usize>> {
    prop::option::weighted(0.75, prop::sample::select(vec![1usize, 2]))
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (
            1usize..=2,
            0usize..=40,
            prop::sample::select(vec![2usize, 4]),
            1usize..=5,
        ),
        (groups(), groups(), prop::option::of(1usize..=5)),
        any::<[bool; 8]>(),
        (
            1usize..=12,
            1usize..=5,
            prop::sample::select(vec![
                Exchange::Ring,
                Exchange::LogDepth,
                Exchange::AllGather,
            ]),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (batch, len, d_inner, d_state),
                (b_groups, c_groups, varlen),
                on,
                (block, ranks, exchange, seed),
            )| Spec {
                batch: if varlen.is_some() { 1 } else { batch },
                len,
                d_inner,
                d_state,
                b_groups,
                c_groups,
                varlen,
                d: on[0],
                z: on[1],
                bias: on[2],
                softplus: on[3],
                init: on[4],
                fin: on[5] || on[6],
                d_final: on[5],
                block,
                ranks,
                exchange,
                add: on[7],
                seed,
            },
        )
}

struct Data {
    dims: Mamba1Dims,
    u: Vec<f32>,
    delta: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Option<Vec<f32>>,
    z: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    init: Option<Vec<f32>>,
    cu: Option<Vec<i64>>,
    d_out: Vec<f32>,
    d_final: Option<Vec<f32>>,
    segs: Vec<(usize, usize)>,
}

fn bc_len(s: &Spec, groups: Option<usize>) -> usize {
    match groups {
        Some(g) => s.batch * g * s.d_state * s.len,
        None => s.d_inner * s.d_state,
    }
}

fn data(s: &Spec) -> Data {
    let mut r = rng(s.seed);
    let dims = Mamba1Dims::new(s.batch, s.d_inner, s.d_state, s.len);
    let cu = s.varlen.map(|n| cu_seqlens(&mut r, s.len, n));
    let rows = cu.as_ref().map_or(s.batch, |c| c.len() - 1);
    let bdl = s.batch * s.d_inner * s.len;
    let dn = s.d_inner * s.d_state;
    Data {
        dims,
        u: randn(&mut r, bdl),
        delta: uniform(&mut r, bdl, 0.0, 0.6),
        a: decay_rates(&mut r, dn),
        b: randn(&mut r, bc_len(s, s.b_groups)),
        c: randn(&mut r, bc_len(s, s.c_groups)),
        d: s.d.then(|| randn(&mut r, s.d_inner)),
        z: s.z.then(|| randn(&mut r, bdl)),
        bias: s.bias.then(|| uniform(&mut r, s.d_inner, -0.3, 0.3)),
        init: s.init.then(|| randn(&mut r, rows * dn)),
        d_out: randn(&mut r, bdl),
        d_final: (s.fin && s.d_final).then(|| randn(&mut r, rows * dn)),
        segs: segments(s.len, &cuts(&mut r, s.len, s.ranks - 1)),
        cu,
    }
}

/// The params over the time-sliced tensors `[u, delta, B, C]` and `z` (the
/// whole problem's or one rank's), with every option but the whole call's
/// initial states and `cu_seqlens`.
fn params<'a>(
    s: &Spec,
    d: &'a Data,
    dims: Mamba1Dims,
    [u, delta, b, c]: [&'a [f32]; 4],
    z: Option<&'a [f32]>,
) -> SelectiveScanParams<'a, f32> {
    let mut p = SelectiveScanParams::new(
        dims,
        u,
        delta,
        &d.a,
        BcInput::from_groups(s.b_groups, b),
        BcInput::from_groups(s.c_groups, c),
    );
    if let Some(z) = z {
        p = p.with_z(z);
    }
    if let Some(v) = &d.d {
        p = p.with_d(v);
    }
    if let Some(v) = &d.bias {
        p = p.with_delta_bias(v);
    }
    p.with_delta_softplus(s.softplus).with_final_states(s.fin)
}

fn whole_params<'a>(s: &Spec, d: &'a Data) -> SelectiveScanParams<'a, f32> {
    let mut p = params(s, d, d.dims, [&d.u, &d.delta, &d.b, &d.c], d.z.as_deref());
    if let Some(i) = &d.init {
        p = p.with_initial_states(i);
    }
    if let Some(cu) = &d.cu {
        p = p.with_cu_seqlens(cu);
    }
    p
}

struct Local {
    u: Vec<f32>,
    delta: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    z: Option<Vec<f32>>,
    d_out: Vec<f32>,
}

fn local(s: &Spec, d: &Data, rank: usize) -> Local {
    let (lo, hi) = d.segs[rank];
    let rows = s.batch * s.d_inner;
    let cut = |v: &[f32], rows| slice_time(v, rows, s.len, lo, hi);
    let cut_bc = |v: &[f32], g: Option<usize>| match g {
        Some(g) => cut(v, s.batch * g * s.d_state),
        None => v.to_vec(),
    };
    Local {
        u: cut(&d.u, rows),
        delta: cut(&d.delta, rows),
        b: cut_bc(&d.b, s.b_groups),
        c: cut_bc(&d.c, s.c_groups),
        z: d.z.as_ref().map(|z| cut(z, rows)),
        d_out: cut(&d.d_out, rows),
    }
}

fn local_params<'a>(
    s: &Spec,
    d: &'a Data,
    l: &'a Local,
    rank: usize,
) -> SelectiveScanParams<'a, f32> {
    let (lo, hi) = d.segs[rank];
    let dims = Mamba1Dims {
        seqlen: hi - lo,
        ..d.dims
    };
    params(s, d, dims, [&l.u, &l.delta, &l.b, &l.c], l.z.as_deref())
}

fn segment<'a>(s: &Spec, d: &'a Data, rank: usize) -> Segment<'a> {
    Segment {
        offset: d.segs[rank].0,
        total_len: s.len,
        cu_seqlens: d.cu.as_deref(),
        initial_states: d.init.as_deref(),
    }
}

/// One case: its spec and its draw.
struct Problem {
    s: Spec,
    d: Data,
}

impl Problem {
    fn new(s: Spec) -> Self {
        let d = data(&s);
        Problem { s, d }
    }

    fn backend(&self) -> Backend<'static> {
        Backend::Cpu(CpuOptions {
            block_len: self.s.block,
        })
    }
}

impl SplitCase for Problem {
    type Grads = ScanGrads<f32, f32>;

    fn ranks(&self) -> usize {
        self.s.ranks
    }

    fn whole(&self) -> (Forward, Self::Grads) {
        let (s, d) = (&self.s, &self.d);
        let p = whole_params(s, d);
        let whole = selective_scan(&p, self.backend()).unwrap();
        let whole_g =
            selective_scan_backward(&p, &d.d_out, d.d_final.as_deref(), self.backend()).unwrap();
        (whole, whole_g)
    }

    fn on_rank(&self, comm: &ThreadComm) -> Result<(Forward, Self::Grads), CpError> {
        let (s, d) = (&self.s, &self.d);
        let (backend, opts) = (self.backend(), cp_options(s.exchange, s.add));
        let rank = comm.rank();
        let l = local(s, d, rank);
        let p = local_params(s, d, &l, rank);
        let seg = segment(s, d, rank);
        let fwd = scan_forward_cp(&p, &seg, comm, backend, opts)?;
        let bwd = scan_backward_cp(
            &p,
            &seg,
            &l.d_out,
            d.d_final.as_deref(),
            comm,
            backend,
            opts,
        )?;
        Ok((fwd, bwd))
    }

    fn join_out(&self, parts: &[Vec<f32>]) -> Vec<f32> {
        join_time(parts, &self.d.segs, self.s.batch * self.s.d_inner)
    }
}

fn check_split(pr: &Problem) -> Result<(), TestCaseError> {
    let (s, d) = (&pr.s, &pr.d);
    let p = whole_params(s, d);
    let (whole, whole_g) = pr.whole();
    let (fwds, bwds) = run_split(pr)?;
    // Step-by-step recurrences: K = 0 (docs/TOLERANCES.md).
    let budget = f32_budget(0.0);
    let segs = &d.segs;
    let rows = s.batch * s.d_inner;
    let mut checks = Vec::new();
    judge_forward(pr, &fwds, &whole, budget, &mut checks)?;
    let join = |f: &dyn Fn(&ScanGrads<f32, f32>) -> Vec<f32>, rows| {
        let parts: Vec<Vec<f32>> = bwds.iter().map(f).collect();
        join_time(&parts, segs, rows)
    };
    let mut split = bwds[0].clone();
    split.du = join(&|g| g.du.clone(), rows);
    split.ddelta = join(&|g| g.ddelta.clone(), rows);
    split.dz = whole_g
        .dz
        .as_ref()
        .map(|_| join(&|g| g.dz.clone().unwrap(), rows));
    if let Some(g) = s.b_groups {
        split.db = join(&|x| x.db.clone(), s.batch * g * s.d_state);
    }
    if let Some(g) = s.c_groups {
        split.dc = join(&|x| x.dc.clone(), s.batch * g * s.d_state);
    }
    for g in &bwds {
        prop_assert_eq!(&g.da, &bwds[0].da);
        prop_assert_eq!(&g.dd, &bwds[0].dd);
        prop_assert_eq!(&g.ddelta_bias, &bwds[0].ddelta_bias);
        prop_assert_eq!(&g.dinitial_states, &bwds[0].dinitial_states);
    }
    let mag = ssm_reference::mamba1_backward::selective_scan_backward_magnitudes(
        &p,
        &d.d_out,
        d.d_final.as_deref(),
    )
    .unwrap();
    // gamma(n), n = 2N + L + b L + D_in / G (docs/TOLERANCES.md, "Mamba-1 backward").
    let n = 2 * s.d_state + s.len + s.batch * s.len + s.d_inner;
    let (sp, wh) = (split.to_f64(), whole_g.to_f64());
    for (((name, a), (_, b)), (_, m)) in sp.named().into_iter().zip(wh.named()).zip(mag.named()) {
        match (a, b, m) {
            (Some(a), Some(b), Some(m)) => checks.push(judge(name, a, b, budget, gamma(n) * l2(m))),
            (None, None, None) => {}
            _ => prop_assert!(false, "{name} present on one side only"),
        }
    }
    all_passed(&checks, &d.segs, &d.cu)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn split_equals_whole(s in spec()) {
        check_split(&Problem::new(s))?;
    }

    #[test]
    fn one_rank_is_the_plain_call_bit_for_bit(s in spec()) {
        one_rank_is_the_plain_call(&Problem::new(Spec { ranks: 1, ..s }))?;
    }
}

#[test]
fn a_long_sequence_over_five_ranks_with_an_empty_one() {
    let s = Spec {
        batch: 2,
        len: 37,
        d_inner: 4,
        d_state: 3,
        b_groups: Some(2),
        c_groups: None,
        varlen: None,
        d: true,
        z: true,
        bias: true,
        softplus: true,
        init: true,
        fin: true,
        d_final: true,
        block: 5,
        ranks: 5,
        exchange: Exchange::LogDepth,
        add: true,
        seed: 11,
    };
    let d = Data {
        segs: vec![(0, 9), (9, 9), (9, 20), (20, 31), (31, 37)],
        ..data(&s)
    };
    let pr = Problem { s, d };
    let (whole, _) = pr.whole();
    let (f, _) = run_split(&pr).unwrap();
    let out: Vec<Vec<f32>> = f.iter().map(|x| x.out.clone()).collect();
    let c = ssm_core::tolerance::compare(&widen(&pr.join_out(&out)), &widen(&whole.out));
    assert!(c.passes(2.0 * f32_budget(0.0)), "{c:?}");
    check_split(&pr).unwrap();
}
