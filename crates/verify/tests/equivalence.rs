//! Equivalence properties between every implementation (issue: foundation §5).
//!
//! Driven by `(case, seed)`: a failure shrinks to a small shape and replays from the
//! seed. Cases per property: 1000 by default, `SSM_PROPTEST_CASES=N` for more.

mod common;

use common::*;
use proptest::prelude::*;
use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba2::DSkip;
use ssm_core::tolerance::{compare, max_window_log_decay, rel_l2_budget, state_budget};
use ssm_core::{DType, Element, ScanOutput};
use ssm_gpu::DeviceElement;
use ssm_verify::check::{check_scan, check_ssd, check_step, compare_outputs};
use ssm_verify::gen::{Mamba1Data, SsdData, StepCase, StepData};
use ssm_verify::impls::{Family, ScanImpl, SsdImpl, StepImpl};

/// The chunked CPU SSD on `T` inputs matches the oracle on the same inputs.
fn chunked_ssd_matches<T: DeviceElement>(
    data: &SsdData,
    chunk: usize,
) -> Result<(), TestCaseError> {
    let inputs = data.inputs::<T>();
    let k_decay = max_window_log_decay(&data.log_decays(&inputs), data.case.dims.seqlen, chunk);
    let oracle = Oracle::ssd(inputs.params(), k_decay);
    for r in check_ssd::<T>(&[SsdImpl::CpuChunked { chunk }], data, None).unwrap() {
        oracle.assert_row(&r)?;
    }
    Ok(())
}

/// The blocked CPU scan on `T` inputs matches the oracle on the same inputs.
fn blocked_scan_matches<T: DeviceElement>(
    data: &Mamba1Data,
    block_len: usize,
) -> Result<(), TestCaseError> {
    let inputs = data.inputs::<T>();
    let oracle = Oracle::scan(inputs.params());
    for r in check_scan::<T>(&[ScanImpl::CpuBlocked { block_len }], data, None).unwrap() {
        oracle.assert_row(&r)?;
    }
    Ok(())
}

fn assert_f64_equal(
    what: &str,
    got: &ScanOutput<f64, f64>,
    want: &ScanOutput<f64, f64>,
) -> Result<(), TestCaseError> {
    let (o, s) = compare_outputs(got, want);
    assert_f64_close(&format!("{what}: out"), o)?;
    if let Some(s) = s {
        assert_f64_close(&format!("{what}: final states"), s)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// The quadratic (masked attention) form equals the recurrence, outputs and final states.
    #[test]
    fn ssd_quadratic_equals_recurrence(case in ssd_case(24, true), seed in any::<u64>()) {
        let data = SsdData::generate(&case, seed);
        let inputs = data.inputs::<f64>();
        let rec = SsdImpl::Recurrence.run(&inputs, None).unwrap();
        let quad = SsdImpl::Quadratic.run(&inputs, None).unwrap();
        assert_f64_equal("quadratic vs recurrence", &quad, &rec)?;
    }

    /// The chunked CPU port equals the recurrence for every chunk size, including
    /// chunk > L and L not a multiple of the chunk.
    #[test]
    fn ssd_chunked_equals_recurrence(case in ssd_case(40, true), chunk in 1usize..=48, half in any::<bool>(), seed in any::<u64>()) {
        let data = SsdData::generate(&case, seed);
        if half {
            chunked_ssd_matches::<half::bf16>(&data, chunk)?;
        } else {
            chunked_ssd_matches::<f32>(&data, chunk)?;
        }
    }

    /// The L-blocked CPU scan equals the oracle for any block length.
    #[test]
    fn scan_blocked_equals_reference(case in mamba1_case(40, true), block_len in 1usize..=48, half in any::<bool>(), seed in any::<u64>()) {
        let data = Mamba1Data::generate(&case, seed);
        if half {
            blocked_scan_matches::<half::f16>(&data, block_len)?;
        } else {
            blocked_scan_matches::<f32>(&data, block_len)?;
        }
    }

    /// Mamba-1 decode steps unrolled over t equal the full recurrence (oracle and CPU step).
    #[test]
    fn mamba1_steps_unrolled_equal_full_scan(mut case in mamba1_case(16, false), seed in any::<u64>()) {
        let g = case.b_groups.unwrap_or(1);
        case.b_groups = Some(g);
        case.c_groups = Some(g);
        case.final_states = true;
        let data = Mamba1Data::generate(&case, seed);
        let full = ssm_reference::selective_scan(&data.inputs::<f64>().params()).unwrap();
        let f32_inputs = data.inputs::<f32>();
        let oracle = Oracle::scan(f32_inputs.params());
        let full32 = &oracle.want;
        let Mamba1Dims { batch, d_inner, d_state, seqlen } = case.dims;
        let h0: Vec<f32> = data.initial_states.clone().unwrap_or(vec![0.0; batch * d_inner * d_state]);
        let mut ref_state: Vec<f64> = h0.iter().map(|&v| v as f64).collect();
        let mut cpu_state = h0.clone();
        let (mut ref_out, mut cpu_out) = (vec![0.0; batch * d_inner * seqlen], vec![0.0; batch * d_inner * seqlen]);
        for t in 0..seqlen {
            let x = cols(&data.u, seqlen, t, t + 1);
            let dt = cols(&data.delta, seqlen, t, t + 1);
            let b = cols(&data.b, seqlen, t, t + 1);
            let c = cols(&data.c, seqlen, t, t + 1);
            let z = data.z.as_ref().map(|z| cols(z, seqlen, t, t + 1));
            let p = Mamba1StepParams {
                d: data.d.as_deref(),
                z: z.as_deref(),
                dt_bias: data.delta_bias.as_deref(),
                dt_softplus: case.softplus,
                ..Mamba1StepParams::new(batch, d_inner, d_state, g, &x, &dt, &data.a, &b, &c)
            };
            let r = ssm_reference::mamba1_step(&p, &mut ref_state).unwrap();
            let s = mamba1_scan::decode_step(&p, &mut cpu_state, mamba1_scan::Backend::Cpu(Default::default())).unwrap();
            for (i, (rv, sv)) in r.out.iter().zip(&s.out).enumerate() {
                ref_out[i * seqlen + t] = *rv;
                cpu_out[i * seqlen + t] = *sv as f64;
            }
        }
        // f32 inputs are exact in f64, so the f64 oracle on them is the same problem.
        let unrolled = ScanOutput { out: ref_out, final_states: Some(ref_state) };
        assert_f64_equal("oracle steps vs oracle scan", &unrolled, full32)?;
        prop_assert_eq!(full.out.len(), full32.out.len());
        let cpu = ScanOutput { out: cpu_out, final_states: Some(cpu_state.iter().map(|&v| v as f64).collect()) };
        oracle.assert_matches("cpu steps vs oracle scan", &cpu, rel_l2_budget(DType::F32, 0.0), state_budget(0.0))?;
    }

    /// Decode steps through `state_batch_indices` (shuffled cache rows, spare rows,
    /// padding entries) equal the oracle: outputs (zero for padding) and the whole
    /// cache afterwards, so untouched rows must stay untouched.
    #[test]
    fn decode_steps_with_state_indices_equal_oracle(
        mamba2 in any::<bool>(),
        (batch, extra, channels, head_dim, d_state) in (1usize..=6, 0usize..=4, 1usize..=4, 1usize..=3, 1usize..=6),
        (two_groups, all_options, d_per_head_dim) in (any::<bool>(), any::<bool>(), any::<bool>()),
        seed in any::<u64>(),
    ) {
        let case = StepCase {
            batch,
            channels,
            head_dim: if mamba2 { head_dim } else { 1 },
            d_state,
            groups: if two_groups && channels % 2 == 0 { 2 } else { 1 },
            indexed: Some(extra),
            all_options,
            d_per_head_dim: mamba2 && d_per_head_dim,
        };
        let family = if mamba2 { Family::Mamba2 } else { Family::Mamba1 };
        let data = StepData::generate(&case, mamba2, seed);
        let oracle = Oracle::step(family, &data);
        for r in check_step::<f32>(family, &[StepImpl::Cpu], &data, None).unwrap() {
            oracle.assert_row(&r)?;
        }
    }

    /// Mamba-2 decode steps unrolled over t equal the full SSD recurrence.
    #[test]
    fn mamba2_steps_unrolled_equal_full_ssd(mut case in ssd_case(16, false), seed in any::<u64>()) {
        case.final_states = true;
        let data = SsdData::generate(&case, seed);
        let inputs = data.inputs::<f32>();
        let oracle = Oracle::ssd(inputs.params(), 0.0);
        let full = &oracle.want;
        let dims = case.dims;
        let (batch, seqlen, heads, p_dim, n) = (dims.batch, dims.seqlen, dims.heads, dims.head_dim, dims.d_state);
        let width = heads * p_dim;
        let s0: Vec<f32> = data.initial_states.clone().unwrap_or(vec![0.0; batch * width * n]);
        let mut ref_state: Vec<f64> = s0.iter().map(|&v| v as f64).collect();
        let mut cpu_state = s0.clone();
        let (mut ref_out, mut cpu_out) = (vec![0.0; batch * seqlen * width], vec![0.0; batch * seqlen * width]);
        let gn = dims.groups * n;
        for t in 0..seqlen {
            let x = time_rows(&data.x, seqlen, width, t, t + 1);
            let dt = time_rows(&data.dt, seqlen, heads, t, t + 1);
            let b = time_rows(&data.b, seqlen, gn, t, t + 1);
            let c = time_rows(&data.c, seqlen, gn, t, t + 1);
            let z = data.z.as_ref().map(|z| time_rows(z, seqlen, width, t, t + 1));
            let full_p = inputs.params();
            let p = Mamba2StepParams {
                d: full_p.d,
                z: z.as_deref(),
                dt_bias: data.dt_bias.as_deref(),
                dt_softplus: case.softplus,
                dt_limit: full_p.dt_limit,
                ..Mamba2StepParams::new(batch, heads, p_dim, n, dims.groups, &x, &dt, &data.a, &b, &c)
            };
            let r = ssm_reference::mamba2_step(&p, &mut ref_state).unwrap();
            let s = mamba2_ssd::decode_step(&p, &mut cpu_state, mamba2_ssd::Backend::Cpu(Default::default())).unwrap();
            for bi in 0..batch {
                for k in 0..width {
                    ref_out[(bi * seqlen + t) * width + k] = r.out[bi * width + k];
                    cpu_out[(bi * seqlen + t) * width + k] = s.out[bi * width + k] as f64;
                }
            }
        }
        let unrolled = ScanOutput { out: ref_out, final_states: Some(ref_state) };
        assert_f64_equal("oracle steps vs oracle recurrence", &unrolled, full)?;
        let cpu = ScanOutput { out: cpu_out, final_states: Some(cpu_state.iter().map(|&v| v as f64).collect()) };
        oracle.assert_matches("cpu steps vs oracle", &cpu, rel_l2_budget(DType::F32, 0.0), state_budget(0.0))?;
    }

    /// Running [0, k) then [k, L) with the state carried equals running [0, L):
    /// for the oracle exactly, and for the blocked CPU scan within budget.
    #[test]
    fn scan_split_with_state_carry_equals_whole(mut case in mamba1_case(32, false), split in 0.0f64..=1.0, block_len in 1usize..=20, seed in any::<u64>()) {
        case.final_states = true;
        let data = Mamba1Data::generate(&case, seed);
        let inputs = data.inputs::<f32>();
        let oracle = Oracle::scan(inputs.params());
        let whole = &oracle.want;
        let len = case.dims.seqlen;
        let k = ((len as f64) * split) as usize;
        let opts = mamba1_scan::Backend::Cpu(mamba1_scan::CpuOptions { block_len });
        let part = |t0: usize, t1: usize, h0: Option<&[f32]>| {
            let slice = ScanSlice::new(&inputs.params(), t0, t1);
            let q = slice.params(inputs.params(), h0);
            (ssm_reference::selective_scan(&q).unwrap(), mamba1_scan::selective_scan(&q, opts).unwrap())
        };
        let (ref_a, cpu_a) = part(0, k, data.initial_states.as_deref());
        let ref_h: Vec<f32> = ref_a.final_states.as_ref().unwrap().iter().map(|&v| v as f32).collect();
        let (ref_b, _) = part(k, len, Some(&ref_h));
        let (_, cpu_b) = part(k, len, cpu_a.final_states.as_deref());
        let rows = case.dims.batch * case.dims.d_inner;
        let join = |a: &[f64], b: &[f64]| -> Vec<f64> {
            (0..rows).flat_map(|r| a[r * k..(r + 1) * k].iter().chain(&b[r * (len - k)..(r + 1) * (len - k)]).copied().collect::<Vec<_>>()).collect()
        };
        if len > 0 {
            // The oracle's carried state passes through f32 here, so compare at the f32 budget.
            let o = compare(&join(&ref_a.out, &ref_b.out), &whole.out);
            oracle.assert_close("oracle split vs whole", o, rel_l2_budget(DType::F32, 0.0), false)?;
            let cpu = ScanOutput {
                out: join(&ssm_core::element::widen(&cpu_a.out), &ssm_core::element::widen(&cpu_b.out)),
                final_states: cpu_b.final_states.as_deref().map(ssm_core::element::widen),
            };
            oracle.assert_matches("cpu split vs whole oracle", &cpu, rel_l2_budget(DType::F32, 0.0), state_budget(0.0))?;
        }
    }

    /// Splitting an SSD sequence with the state carried equals running it whole.
    #[test]
    fn ssd_split_with_state_carry_equals_whole(mut case in ssd_case(32, false), split in 0.0f64..=1.0, chunk in 1usize..=20, seed in any::<u64>()) {
        case.final_states = true;
        let data = SsdData::generate(&case, seed);
        let inputs = data.inputs::<f32>();
        let k_decay = max_window_log_decay(&data.log_decays(&inputs), case.dims.seqlen, chunk);
        let oracle = Oracle::ssd(inputs.params(), k_decay);
        let dims = case.dims;
        let len = dims.seqlen;
        let k = ((len as f64) * split) as usize;
        let width = dims.heads * dims.head_dim;
        let opts = mamba2_ssd::Backend::Cpu(mamba2_ssd::CpuOptions { chunk_size: chunk });
        let part = |t0: usize, t1: usize, s0: Option<&[f32]>| {
            let slice = SsdSlice::new(&inputs.params(), t0, t1);
            mamba2_ssd::ssd_forward(&slice.params(inputs.params(), s0), opts).unwrap()
        };
        let a = part(0, k, data.initial_states.as_deref());
        let b = part(k, len, a.final_states.as_deref());
        let mut joined = Vec::with_capacity(oracle.want.out.len());
        for bi in 0..dims.batch {
            joined.extend(ssm_core::element::widen(&a.out[bi * k * width..(bi + 1) * k * width]));
            joined.extend(ssm_core::element::widen(&b.out[bi * (len - k) * width..(bi + 1) * (len - k) * width]));
        }
        let cpu = ScanOutput { out: joined, final_states: b.final_states.as_deref().map(ssm_core::element::widen) };
        oracle.assert_matches("cpu split vs whole oracle", &cpu, rel_l2_budget(DType::F32, k_decay), state_budget(k_decay))?;
    }

    /// Varlen packing equals separate runs of each sequence (oracle exactly, CPU ports within budget).
    #[test]
    fn varlen_packing_equals_separate_runs(mut scan_case in mamba1_case(30, false), mut ssd in ssd_case(30, false), seqs in 1usize..=5, seed in any::<u64>()) {
        scan_case.dims.batch = 1;
        scan_case.varlen = Some(seqs);
        scan_case.final_states = true;
        let data = Mamba1Data::generate(&scan_case, seed);
        let inputs = data.inputs::<f32>();
        let oracle = Oracle::scan(inputs.params());
        let packed = &oracle.want;
        let cpu_packed = mamba1_scan::selective_scan(&inputs.params(), mamba1_scan::Backend::Cpu(Default::default())).unwrap().to_f64();
        let cu = data.cu_seqlens.clone().unwrap();
        let dims = scan_case.dims;
        let hn = dims.d_inner * dims.d_state;
        let mut sep = ScanOutput { out: vec![0.0; packed.out.len()], final_states: Some(vec![]) };
        for (i, w) in cu.windows(2).enumerate() {
            let (t0, t1) = (w[0] as usize, w[1] as usize);
            let p = inputs.params();
            let slice = ScanSlice::new(&p, t0, t1);
            let q = slice.params(p, p.initial_states.map(|h| &h[i * hn..(i + 1) * hn]));
            let r = ssm_reference::selective_scan(&q).unwrap();
            for d in 0..dims.d_inner {
                for t in t0..t1 {
                    sep.out[d * dims.seqlen + t] = r.out[d * (t1 - t0) + (t - t0)];
                }
            }
            sep.final_states.as_mut().unwrap().extend(r.final_states.unwrap());
        }
        assert_f64_equal("scan varlen oracle vs separate", packed, &sep)?;
        // The packed oracle equals the separate runs (just checked), so it judges the port.
        oracle.assert_matches("scan varlen cpu vs separate", &cpu_packed, rel_l2_budget(DType::F32, 0.0), state_budget(0.0))?;

        ssd.dims.batch = 1;
        ssd.varlen = Some(seqs);
        ssd.final_states = true;
        let data = SsdData::generate(&ssd, seed ^ 0x5eed);
        let inputs = data.inputs::<f32>();
        let k_decay = max_window_log_decay(&data.log_decays(&inputs), ssd.dims.seqlen, mamba2_ssd::CpuOptions::default().chunk_size);
        let oracle = Oracle::ssd(inputs.params(), k_decay);
        let packed = &oracle.want;
        let cpu_packed = mamba2_ssd::ssd_forward(&inputs.params(), mamba2_ssd::Backend::Cpu(Default::default())).unwrap().to_f64();
        let cu = data.cu_seqlens.clone().unwrap();
        let dims = ssd.dims;
        let width = dims.heads * dims.head_dim;
        let sn = width * dims.d_state;
        let mut sep = ScanOutput { out: vec![], final_states: Some(vec![]) };
        for (i, w) in cu.windows(2).enumerate() {
            let (t0, t1) = (w[0] as usize, w[1] as usize);
            let p = inputs.params();
            let slice = SsdSlice::new(&p, t0, t1);
            let q = slice.params(p, p.initial_states.map(|s| &s[i * sn..(i + 1) * sn]));
            let r = ssm_reference::ssd_recurrence(&q).unwrap();
            sep.out.extend(r.out);
            sep.final_states.as_mut().unwrap().extend(r.final_states.unwrap());
        }
        assert_f64_equal("ssd varlen oracle vs separate", packed, &sep)?;
        oracle.assert_matches("ssd varlen cpu vs separate", &cpu_packed, rel_l2_budget(DType::F32, k_decay), state_budget(k_decay))?;
    }

    /// Mamba-1 with A broadcast over N and B/C shared by channel groups is SSD with P = 1.
    #[test]
    fn mamba1_with_broadcast_a_equals_ssd_with_p1(mut case in ssd_case(24, false), seed in any::<u64>()) {
        case.dims.head_dim = 1;
        case.dt_limit = None;
        case.final_states = true;
        // SSD clamps dt' to its default limit [0, inf) (as mamba_ssm does); Mamba-1
        // does not clamp, so keep dt' >= 0: without softplus dt is drawn positive.
        case.dt_bias &= case.softplus;
        if case.d == ssm_verify::gen::DKind::PerHeadDim {
            case.d = ssm_verify::gen::DKind::PerHead;
        }
        let data = SsdData::generate(&case, seed);
        let inputs = data.inputs::<f32>();
        let ssd = ssm_reference::ssd_recurrence(&inputs.params()).unwrap();
        let dims = case.dims;
        let (batch, len, heads, n, g) = (dims.batch, dims.seqlen, dims.heads, dims.d_state, dims.groups);
        // (b, L, H) -> (b, H, L) and (b, L, G, N) -> (b, G, N, L).
        let to_channel_major = |v: &[f32], inner: usize| -> Vec<f32> {
            let mut out = vec![0.0; v.len()];
            for bi in 0..batch { for t in 0..len { for k in 0..inner {
                out[(bi * inner + k) * len + t] = v[(bi * len + t) * inner + k];
            }}}
            out
        };
        let u = to_channel_major(&inputs.x, heads);
        let delta = to_channel_major(&inputs.dt, heads);
        let b = to_channel_major(&inputs.b, g * n);
        let c = to_channel_major(&inputs.c, g * n);
        let z = inputs.z.as_deref().map(|z| to_channel_major(z, heads));
        let a: Vec<f32> = data.a.iter().flat_map(|&ah| std::iter::repeat_n(ah, n)).collect();
        let d = match inputs.params().d { Some(DSkip::PerHead(d)) => Some(d), _ => None };
        let p = SelectiveScanParams {
            d,
            z: z.as_deref(),
            delta_bias: data.dt_bias.as_deref(),
            delta_softplus: case.softplus,
            initial_states: data.initial_states.as_deref(),
            return_final_states: true,
            ..SelectiveScanParams::new(
                Mamba1Dims { batch, d_inner: heads, d_state: n, seqlen: len },
                &u, &delta, &a,
                BcInput::Grouped { groups: g, data: &b },
                BcInput::Grouped { groups: g, data: &c },
            )
        };
        let oracle = Oracle::scan(p);
        let m1 = &oracle.want;
        let m1_token_major = ScanOutput {
            out: {
                let mut out = vec![0.0; m1.out.len()];
                for bi in 0..batch { for h in 0..heads { for t in 0..len {
                    out[(bi * len + t) * heads + h] = m1.out[(bi * heads + h) * len + t];
                }}}
                out
            },
            final_states: m1.final_states.clone(),
        };
        assert_f64_equal("mamba1(A broadcast) vs ssd(P=1)", &m1_token_major, &ssd)?;
        let cpu = mamba1_scan::selective_scan(&p, mamba1_scan::Backend::Cpu(Default::default())).unwrap().to_f64();
        oracle.assert_matches("cpu scan on the P=1 problem", &cpu, rel_l2_budget(f32::DTYPE, 0.0), state_budget(0.0))?;
    }
}
