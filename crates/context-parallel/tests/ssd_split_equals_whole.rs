//! The context-parallel SSD on CPU thread ranks == the whole sequence on one
//! "device" (the CPU port), forward and backward: random rank counts (1..=5),
//! segment boundaries anywhere (empty segments, boundaries inside varlen
//! sequences, sequences spanning several ranks), every option, every exchange
//! form; and one rank == the plain call bit for bit. 48 cases per property by
//! default, `SSM_PROPTEST_CASES=N` for more.

mod support;

use mamba2_ssd::{ssd_backward, ssd_forward, Backend, CpuOptions};
use proptest::prelude::*;
use ssm_context_parallel::{
    ssd_backward_cp, ssd_forward_cp, Communicator, CpError, CpOptions, Exchange, Segment,
    ThreadComm,
};
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::mamba2_grad::GradRef;
use ssm_core::SsdGrads;
use support::*;

#[derive(Clone, Debug)]
struct Spec {
    batch: usize,
    len: usize,
    heads: usize,
    groups: usize,
    head_dim: usize,
    d_state: usize,
    /// Varlen with this many sequences (batch 1).
    varlen: Option<usize>,
    bias: bool,
    softplus: bool,
    limit: bool,
    d: Option<bool>,
    z: bool,
    init: bool,
    fin: bool,
    d_final: bool,
    chunk: usize,
    ranks: usize,
    exchange: Exchange,
    /// The forward's pass 2.
    add: bool,
    seed: u64,
}

fn exchange() -> impl Strategy<Value = Exchange> {
    prop::sample::select(vec![
        Exchange::Ring,
        Exchange::LogDepth,
        Exchange::AllGather,
    ])
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (
            1usize..=2,
            0usize..=40,
            prop::sample::select(vec![(1usize, 1usize), (2, 1), (2, 2), (4, 2)]),
        ),
        (1usize..=3, 1usize..=5, prop::option::of(1usize..=5)),
        any::<[bool; 8]>(),
        prop::option::of(any::<bool>()),
        (1usize..=12, 1usize..=5, exchange(), any::<u64>()),
    )
        .prop_map(
            |(
                (batch, len, (heads, groups)),
                (head_dim, d_state, varlen),
                on,
                d,
                (chunk, ranks, exchange, seed),
            )| Spec {
                batch: if varlen.is_some() { 1 } else { batch },
                len,
                heads,
                groups,
                head_dim,
                d_state,
                varlen,
                bias: on[0],
                softplus: on[1],
                limit: on[2],
                d,
                z: on[3],
                init: on[4],
                fin: on[5] || on[6],
                d_final: on[5],
                chunk,
                ranks,
                exchange,
                add: on[7],
                seed,
            },
        )
}

/// Every tensor of one problem (f32 inputs).
struct Data {
    dims: SsdDims,
    x: Vec<f32>,
    dt: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    bias: Option<Vec<f32>>,
    d: Option<(bool, Vec<f32>)>,
    z: Option<Vec<f32>>,
    init: Option<Vec<f32>>,
    cu: Option<Vec<i64>>,
    d_out: Vec<f32>,
    d_final: Option<Vec<f32>>,
    segs: Vec<(usize, usize)>,
}

fn data(s: &Spec) -> Data {
    let mut r = rng(s.seed);
    let dims = SsdDims::new(s.batch, s.len, s.heads, s.head_dim, s.d_state, s.groups);
    let tok = s.batch * s.len;
    let cu = s.varlen.map(|n| cu_seqlens(&mut r, s.len, n));
    let rows = cu.as_ref().map_or(s.batch, |c| c.len() - 1);
    let state = s.heads * s.head_dim * s.d_state;
    let x = randn(&mut r, tok * s.heads * s.head_dim);
    let dt = uniform(&mut r, tok * s.heads, 0.0, 0.6);
    let a = decay_rates(&mut r, s.heads);
    let b = randn(&mut r, tok * s.groups * s.d_state);
    let c = randn(&mut r, tok * s.groups * s.d_state);
    let bias = s.bias.then(|| uniform(&mut r, s.heads, -0.3, 0.3));
    let d = s.d.map(|per_dim| {
        let n = if per_dim {
            s.heads * s.head_dim
        } else {
            s.heads
        };
        (per_dim, randn(&mut r, n))
    });
    let z = s.z.then(|| randn(&mut r, tok * s.heads * s.head_dim));
    let init = s.init.then(|| randn(&mut r, rows * state));
    let d_out = randn(&mut r, tok * s.heads * s.head_dim);
    let d_final = (s.fin && s.d_final).then(|| randn(&mut r, rows * state));
    let segs = segments(s.len, &cuts(&mut r, s.len, s.ranks - 1));
    Data {
        dims,
        x,
        dt,
        a,
        b,
        c,
        bias,
        d,
        z,
        init,
        cu,
        d_out,
        d_final,
        segs,
    }
}

fn dskip(d: &Option<(bool, Vec<f32>)>) -> Option<DSkip<'_>> {
    d.as_ref().map(|(per_dim, v)| {
        if *per_dim {
            DSkip::PerHeadDim(v)
        } else {
            DSkip::PerHead(v)
        }
    })
}

/// The params over the token-major tensors `[x, dt, B, C]` and `z` (the whole
/// problem's or one rank's), with every option but the whole call's initial
/// states and `cu_seqlens`.
fn params<'a>(
    s: &Spec,
    d: &'a Data,
    dims: SsdDims,
    [x, dt, b, c]: [&'a [f32]; 4],
    z: Option<&'a [f32]>,
) -> SsdParams<'a, f32> {
    let mut p = SsdParams::new(dims, x, dt, &d.a, b, c);
    if let Some(z) = z {
        p = p.with_z(z);
    }
    if let Some(bias) = &d.bias {
        p = p.with_dt_bias(bias);
    }
    p = p.with_dt_softplus(s.softplus);
    if s.limit {
        p = p.with_dt_limit(0.05, 0.7);
    }
    if let Some(skip) = dskip(&d.d) {
        p = p.with_d(skip);
    }
    p.with_final_states(s.fin)
}

fn whole_params<'a>(s: &Spec, d: &'a Data) -> SsdParams<'a, f32> {
    let mut p = params(s, d, d.dims, [&d.x, &d.dt, &d.b, &d.c], d.z.as_deref());
    if let Some(i) = &d.init {
        p = p.with_initial_states(i);
    }
    if let Some(cu) = &d.cu {
        p = p.with_cu_seqlens(cu);
    }
    p
}

/// This rank's slices of every token-major tensor.
struct Local {
    x: Vec<f32>,
    dt: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    z: Option<Vec<f32>>,
    d_out: Vec<f32>,
}

fn local(s: &Spec, d: &Data, rank: usize) -> Local {
    let (lo, hi) = d.segs[rank];
    let hp = s.heads * s.head_dim;
    let gn = s.groups * s.d_state;
    let cut = |v: &[f32], per| slice_tokens(v, s.batch, s.len, per, lo, hi);
    Local {
        x: cut(&d.x, hp),
        dt: cut(&d.dt, s.heads),
        b: cut(&d.b, gn),
        c: cut(&d.c, gn),
        z: d.z.as_ref().map(|z| cut(z, hp)),
        d_out: cut(&d.d_out, hp),
    }
}

fn local_params<'a>(s: &Spec, d: &'a Data, l: &'a Local, rank: usize) -> SsdParams<'a, f32> {
    let (lo, hi) = d.segs[rank];
    let dims = SsdDims {
        seqlen: hi - lo,
        ..d.dims
    };
    params(s, d, dims, [&l.x, &l.dt, &l.b, &l.c], l.z.as_deref())
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
            chunk_size: self.s.chunk,
        })
    }
}

impl SplitCase for Problem {
    type Grads = SsdGrads<f32, f32>;

    fn ranks(&self) -> usize {
        self.s.ranks
    }

    fn whole(&self) -> (Forward, Self::Grads) {
        let (s, d) = (&self.s, &self.d);
        let p = whole_params(s, d);
        let whole = ssd_forward(&p, self.backend()).unwrap();
        let whole_g = ssd_backward(&p, &d.d_out, d.d_final.as_deref(), self.backend()).unwrap();
        (whole, whole_g)
    }

    fn on_rank(&self, comm: &ThreadComm) -> Result<(Forward, Self::Grads), CpError> {
        let (s, d) = (&self.s, &self.d);
        let (backend, opts) = (self.backend(), cp_options(s.exchange, s.add));
        let rank = comm.rank();
        let l = local(s, d, rank);
        let p = local_params(s, d, &l, rank);
        let seg = segment(s, d, rank);
        let fwd = ssd_forward_cp(&p, &seg, comm, backend, opts)?;
        let bwd = ssd_backward_cp(
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
        let s = &self.s;
        join_tokens(parts, &self.d.segs, s.batch, s.heads * s.head_dim)
    }
}

fn log_decays(p: &SsdParams<'_, f32>) -> Vec<f64> {
    let d = p.dims;
    let mut v = Vec::new();
    for bi in 0..d.batch {
        for h in 0..d.heads {
            for t in 0..d.seqlen {
                v.push(p.dt_at(bi, t, h) * f64::from(p.a[h]));
            }
        }
    }
    v
}

fn check_split(pr: &Problem) -> Result<(), TestCaseError> {
    let (s, d) = (&pr.s, &pr.d);
    let p = whole_params(s, d);
    let (whole, whole_g) = pr.whole();
    let (fwds, bwds) = run_split(pr)?;
    let (hp, gn) = (s.heads * s.head_dim, s.groups * s.d_state);
    let k = sliding_k(&log_decays(&p), s.len, s.chunk);
    let budget = f32_budget(k);
    let segs = &d.segs;
    let mut checks = Vec::new();
    judge_forward(pr, &fwds, &whole, budget, &mut checks)?;

    // Backward: per-token gradients joined, parameter and state gradients the same on every rank.
    let join = |f: &dyn Fn(&SsdGrads<f32, f32>) -> Vec<f32>, per| {
        let parts: Vec<Vec<f32>> = bwds.iter().map(f).collect();
        join_tokens(&parts, segs, s.batch, per)
    };
    let mut split = bwds[0].clone();
    split.dx = join(&|g| g.dx.clone(), hp);
    split.ddt = join(&|g| g.ddt.clone(), s.heads);
    split.db = join(&|g| g.db.clone(), gn);
    split.dc = join(&|g| g.dc.clone(), gn);
    split.dz = whole_g
        .dz
        .as_ref()
        .map(|_| join(&|g| g.dz.clone().unwrap(), hp));
    for g in &bwds {
        prop_assert_eq!(&g.da, &bwds[0].da);
        prop_assert_eq!(&g.dd, &bwds[0].dd);
        prop_assert_eq!(&g.ddt_bias, &bwds[0].ddt_bias);
        prop_assert_eq!(&g.dinitial_states, &bwds[0].dinitial_states);
    }
    let mag =
        ssm_reference::ssd_backward::ssd_backward_magnitude(&p, &d.d_out, d.d_final.as_deref())
            .unwrap()
            .grads;
    let q = s.chunk.min(s.len.max(1));
    let n = 3 * s.len * s.batch + (q / 2 + 1).pow(2) + s.head_dim * s.d_state;
    let (sp, wh) = (split.to_f64(), whole_g.to_f64());
    for (((name, a), (_, b)), (_, m)) in sp.named().into_iter().zip(wh.named()).zip(mag.named()) {
        let (a, b, m) = match (a, b, m) {
            (GradRef::Input(a), GradRef::Input(b), GradRef::Input(m))
            | (GradRef::Param(a), GradRef::Param(b), GradRef::Param(m)) => (a, b, m),
            _ => unreachable!("same options on both sides"),
        };
        let gm = (gamma(n) + 4.0 * f64::from(f32::EPSILON) * k) * l2(m);
        checks.push(judge(name, a, b, budget, gm));
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

/// Two ranks, a boundary inside a varlen sequence, every option: a fixed case
/// that runs even when the property tests are filtered out.
#[test]
fn boundary_inside_a_varlen_sequence() {
    let s = Spec {
        batch: 1,
        len: 23,
        heads: 2,
        groups: 1,
        head_dim: 3,
        d_state: 4,
        varlen: Some(3),
        bias: true,
        softplus: true,
        limit: false,
        d: Some(true),
        z: true,
        init: true,
        fin: true,
        d_final: true,
        chunk: 4,
        ranks: 4,
        exchange: Exchange::LogDepth,
        add: true,
        seed: 7,
    };
    check_split(&Problem::new(s)).unwrap();
}

#[test]
fn a_bad_segment_is_an_error_on_every_rank() {
    let s = Spec {
        batch: 1,
        len: 8,
        heads: 1,
        groups: 1,
        head_dim: 2,
        d_state: 2,
        varlen: None,
        bias: false,
        softplus: false,
        limit: false,
        d: None,
        z: false,
        init: false,
        fin: false,
        d_final: false,
        chunk: 4,
        ranks: 2,
        exchange: Exchange::Ring,
        add: false,
        seed: 1,
    };
    let d = Data {
        segs: vec![(0, 4), (4, 8)],
        ..data(&s)
    };
    let backend = Backend::Cpu(CpuOptions::default());
    // Rank 1 claims to start at 3: an overlap.
    let results = ThreadComm::run(2, |comm| {
        let rank = comm.rank();
        let l = local(&s, &d, rank);
        let p = local_params(&s, &d, &l, rank);
        let seg = Segment {
            offset: if rank == 1 { 3 } else { 0 },
            ..segment(&s, &d, rank)
        };
        ssd_forward_cp(&p, &seg, comm, backend, CpOptions::default())
    });
    for r in &results {
        assert!(matches!(r, Err(CpError::Segment { .. })), "{r:?}");
    }
    // Rank 0 passes its cu_seqlens in the local params: its own error, a Peer error elsewhere.
    let cu = [0i64, 4];
    let results = ThreadComm::run(2, |comm| {
        let rank = comm.rank();
        let l = local(&s, &d, rank);
        let mut p = local_params(&s, &d, &l, rank);
        if rank == 0 {
            p = p.with_cu_seqlens(&cu);
        }
        ssd_forward_cp(
            &p,
            &segment(&s, &d, rank),
            comm,
            backend,
            CpOptions::default(),
        )
    });
    assert!(matches!(
        &results[0],
        Err(CpError::Segment {
            arg: "local.cu_seqlens",
            ..
        })
    ));
    assert!(matches!(&results[1], Err(CpError::Peer { rank: 0 })));
}
