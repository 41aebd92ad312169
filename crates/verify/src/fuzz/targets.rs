//! The differential targets: decode a problem, run the oracle and every
//! implementation on the same rounded inputs, judge each by [`super::verdict`].

use std::cell::OnceCell;

use ssm_core::mamba2::SsdParams;
use ssm_core::shape::segments;
use ssm_core::tolerance::{rel_l2_budget, state_budget};
use ssm_core::{DType, Result, ScanOutput};
use ssm_gpu::DeviceElement;

use super::envelope::{
    longest_sequence, mamba1_step_envelope, mamba2_step_envelope, scan_envelope, ssd_envelope,
    Envelope,
};
use super::problems::{ScanProblem, SsdProblem, StepProblem};
use super::verdict::{judge, shift_rates, Budget, Class, Conditioning};
use super::{guarded, Ctx, Finding, Outcome, Target};
use crate::conditioning::{scan_magnitude, scan_shifted, ssd_magnitude, ssd_shifted};
use crate::impls::{Family, ScanImpl, SsdImpl, CUDA_SSD_MAX_CHUNK};

const F32_MAX: f64 = f32::MAX as f64;

/// A target's outcome, or the first finding against an implementation.
type Judged = std::result::Result<Outcome, Finding>;

/// The CPU implementation, then the CUDA one where the run has a GPU.
fn cpu_then_cuda<I>(ctx: &Ctx<'_>, cpu: I, cuda: I) -> Vec<I> {
    let mut impls = vec![cpu];
    if ctx.gpu.is_some() {
        impls.push(cuda);
    }
    impls
}

/// The f32 budget of an implementation storing `dtype` whose decays are off
/// by `sum |a|` = `k` at the most (0: step by step).
fn f32_budget(dtype: DType, k: f64, reduction: usize, env: &Envelope) -> Budget {
    Budget::f32(
        rel_l2_budget(dtype, k),
        state_budget(k),
        dtype,
        reduction,
        env,
    )
}

/// One oracle run on modified inputs (verdict docs), computed at most once.
type OracleRun<'a> = Box<dyn Fn() -> Option<ScanOutput<f64, f64>> + 'a>;

/// The two runs that make up a problem's [`Conditioning`].
struct ConditioningRuns<'a> {
    /// The oracle on absolute values of the linear inputs.
    magnitude: OracleRun<'a>,
    /// The oracle with the rates moved by [`shift_rates`].
    shifted: OracleRun<'a>,
}

impl<'a> ConditioningRuns<'a> {
    fn of(
        magnitude: impl Fn() -> Option<ScanOutput<f64, f64>> + 'a,
        shifted: impl Fn() -> Option<ScanOutput<f64, f64>> + 'a,
    ) -> Self {
        ConditioningRuns {
            magnitude: Box::new(magnitude),
            shifted: Box::new(shifted),
        }
    }

    fn run(&self) -> Conditioning {
        Conditioning {
            magnitude: guarded(&self.magnitude).ok().flatten(),
            shifted: guarded(&self.shifted).ok().flatten(),
        }
    }
}

/// Runs implementations against one oracle result and records the outcome.
struct Referee<'a> {
    target: Target,
    problem: String,
    want: Result<ScanOutput<f64, f64>>,
    env: Option<Envelope>,
    conditioning: ConditioningRuns<'a>,
    conditioning_cache: OnceCell<Conditioning>,
    outcome: Outcome,
}

impl<'a> Referee<'a> {
    /// Run the oracle (a panic in it is a finding) and, where it accepted the
    /// problem, the envelope; every target judges against these two.
    fn new(
        target: Target,
        problem: String,
        oracle: impl FnOnce() -> Result<ScanOutput<f64, f64>>,
        envelope: impl FnOnce() -> Envelope,
        conditioning: ConditioningRuns<'a>,
    ) -> std::result::Result<Self, Finding> {
        let want = guarded(oracle).map_err(|m| oracle_panic(target, &problem, m))?;
        let env = want.is_ok().then(envelope);
        let referee = Referee {
            target,
            problem,
            want,
            env,
            conditioning,
            conditioning_cache: OnceCell::new(),
            outcome: Outcome::default(),
        };
        referee.check_oracle()?;
        Ok(referee)
    }

    fn finding(&self, implementation: &str, class: Option<Class>, detail: String) -> Finding {
        Finding {
            target: self.target,
            implementation: implementation.to_string(),
            problem: self.problem.clone(),
            class,
            detail,
        }
    }

    /// The oracle itself must be finite on finite inputs that fit f64.
    fn check_oracle(&self) -> std::result::Result<(), Finding> {
        if let (Ok(want), Some(env)) = (&self.want, &self.env) {
            if Class::of(env, want, f64::MAX, None) == Class::InModel {
                let states = want.final_states.as_deref().unwrap_or(&[]);
                if want.out.iter().chain(states).any(|v| !v.is_finite()) {
                    return Err(self.finding(
                        "oracle",
                        Some(Class::InModel),
                        "non-finite result on finite inputs whose envelope fits f64".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Judge one implementation; `precision` is the largest finite value it
    /// computes with, `out_dtype` the type its outputs are stored in.
    fn judge(
        &mut self,
        name: &str,
        precision: f64,
        out_dtype: Option<DType>,
        budget: impl FnOnce(&Envelope) -> Budget,
        may_decline: bool,
        run: impl FnOnce() -> Result<ScanOutput<f64, f64>>,
    ) -> std::result::Result<(), Finding> {
        let (class, budget) = match (&self.want, &self.env) {
            (Ok(want), Some(env)) => {
                let budget = budget(env);
                (
                    Class::of(env, want, precision, out_dtype).bounded_by(&budget),
                    budget,
                )
            }
            _ => (Class::Invalid, Budget::NONE),
        };
        let got =
            guarded(run).map_err(|m| self.finding(name, Some(class), format!("panicked: {m}")))?;
        let conditioning = || {
            self.conditioning_cache
                .get_or_init(|| self.conditioning.run())
        };
        let checked = judge(class, &got, &self.want, &budget, may_decline, conditioning)
            .map_err(|d| self.finding(name, Some(class), d))?;
        self.outcome.record(class, checked);
        Ok(())
    }
}

// ---------------------------------------------------------------- scan

pub(super) fn scan(bytes: &[u8], ctx: &Ctx<'_>) -> Judged {
    let problem = ScanProblem::decode(&mut super::draw::Bytes::new(bytes));
    by_dtype!(problem.dtype, scan_as(&problem, ctx))
}

fn scan_as<T: DeviceElement>(problem: &ScanProblem, ctx: &Ctx<'_>) -> Judged {
    let inputs = problem.data.inputs::<T>();
    let p = inputs.params();
    let reduction = p.dims.d_state + longest_sequence(p.cu_seqlens, p.dims.seqlen);
    let runs = ConditioningRuns::of(|| scan_magnitude(&p), || scan_shifted(&p));
    let (oracle, envelope) = (|| ssm_reference::selective_scan(&p), || scan_envelope(&p));
    let mut referee = Referee::new(Target::Scan, problem.describe(), oracle, envelope, runs)?;
    let cpu = ScanImpl::CpuBlocked {
        block_len: problem.block_len,
    };
    for imp in cpu_then_cuda(ctx, cpu, ScanImpl::Cuda) {
        let run = || imp.run(&inputs, ctx.gpu);
        let is_cuda = imp == ScanImpl::Cuda;
        let budget = |env: &Envelope| f32_budget(T::DTYPE, 0.0, reduction, env);
        referee.judge(&imp.name(), F32_MAX, Some(T::DTYPE), budget, is_cuda, run)?;
    }
    Ok(referee.outcome)
}

// ---------------------------------------------------------------- SSD

pub(super) fn ssd(bytes: &[u8], ctx: &Ctx<'_>) -> Judged {
    let problem = SsdProblem::decode(&mut super::draw::Bytes::new(bytes));
    by_dtype!(problem.dtype, ssd_as(&problem, ctx))
}

/// The largest `sum |dt' A|` over windows of `window` steps that restart at every
/// sequence start, as a chunked implementation cuts them (`usize::MAX`: whole
/// sequences). The tolerance model's `K`.
pub fn ssd_window_log_decay<T: ssm_core::Element>(p: &SsdParams<'_, T>, window: usize) -> f64 {
    let dims = p.dims;
    let rows = if p.cu_seqlens.is_some() {
        1
    } else {
        dims.batch
    };
    let mut k: f64 = 0.0;
    for row in 0..rows {
        for (start, end) in segments(p.cu_seqlens, dims.seqlen) {
            for h in 0..dims.heads {
                let a = p.a[h] as f64;
                let mut t = start;
                while t < end {
                    let stop = end.min(t.saturating_add(window));
                    let sum: f64 = (t..stop).map(|s| (p.dt_at(row, s, h) * a).abs()).sum();
                    k = k.max(sum);
                    t = stop;
                }
            }
        }
    }
    k
}

fn ssd_as<T: DeviceElement>(problem: &SsdProblem, ctx: &Ctx<'_>) -> Judged {
    let inputs = problem.data.inputs::<T>();
    let p = inputs.params();
    let dims = p.dims;
    let reduction = dims.d_state + dims.head_dim + longest_sequence(p.cu_seqlens, dims.seqlen);
    let runs = ConditioningRuns::of(|| ssd_magnitude(&p), || ssd_shifted(&p));
    let (oracle, envelope) = (|| ssm_reference::ssd_recurrence(&p), || ssd_envelope(&p));
    let mut referee = Referee::new(Target::Ssd, problem.describe(), oracle, envelope, runs)?;
    let valid = referee.want.is_ok();
    let k_of = |window: usize| {
        if valid {
            ssd_window_log_decay(&p, window)
        } else {
            0.0
        }
    };

    let quadratic = SsdImpl::Quadratic;
    let k_full = k_of(usize::MAX);
    referee.judge(
        &quadratic.name(),
        f64::MAX,
        None,
        |env| Budget::f64(k_full, reduction, env),
        false,
        || quadratic.run(&inputs, None),
    )?;

    let cpu = SsdImpl::CpuChunked {
        chunk: problem.chunk,
    };
    for imp in cpu_then_cuda(ctx, cpu, SsdImpl::Cuda) {
        let window = match imp {
            SsdImpl::CpuChunked { chunk } => chunk,
            _ => CUDA_SSD_MAX_CHUNK,
        };
        let k = k_of(window);
        let budget = |env: &Envelope| f32_budget(T::DTYPE, k, reduction, env).with_log_decay(k);
        let is_cuda = imp == SsdImpl::Cuda;
        let run = || imp.run(&inputs, ctx.gpu);
        referee.judge(&imp.name(), F32_MAX, Some(T::DTYPE), budget, is_cuda, run)?;
    }
    Ok(referee.outcome)
}

// ---------------------------------------------------------------- decode steps

pub(super) fn step(bytes: &[u8], ctx: &Ctx<'_>) -> Judged {
    let problem = StepProblem::decode(&mut super::draw::Bytes::new(bytes));
    by_dtype!(problem.dtype, step_as(&problem, ctx))
}

/// Where a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepBackend {
    Cpu,
    Cuda,
}

/// Run one step of `problem` on a copy of its cache; returns the output and the
/// whole updated cache, widened to f64, and the cache itself for bitwise checks.
fn run_step<T: DeviceElement>(
    problem: &StepProblem,
    tensors: &super::problems::StepTensors<T>,
    backend: StepBackend,
    ctx: &Ctx<'_>,
) -> (Result<ScanOutput<f64, f64>>, Vec<f32>) {
    let mut state = problem.state.clone();
    let result = (|| {
        let gpu = match backend {
            StepBackend::Cpu => None,
            StepBackend::Cuda => Some(ctx.require_gpu()?),
        };
        let mamba1 = || problem.mamba1(tensors);
        let mamba2 = || problem.mamba2(tensors);
        crate::impls::decode_step(problem.family, mamba1, mamba2, &mut state, gpu)
    })();
    (result, state)
}

/// What a step must leave alone, whatever the values: cache rows no batch row
/// names stay bit for bit, padding rows output exactly zero, and a rejected call
/// touches nothing.
fn step_invariants(
    problem: &StepProblem,
    got: &Result<ScanOutput<f64, f64>>,
    cache_after: &[f32],
) -> std::result::Result<(), String> {
    let same_bits = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let Ok(got) = got else {
        return if same_bits(cache_after, &problem.state) {
            Ok(())
        } else {
            Err("a rejected call modified the state cache".into())
        };
    };
    let Some(indices) = &problem.indices else {
        return Ok(());
    };
    let row_len = problem.row_len();
    let mut named = vec![false; problem.cache_rows];
    for &i in indices {
        if i >= 0 {
            named[i as usize] = true;
        }
    }
    for (r, named) in named.iter().enumerate() {
        let range = r * row_len..(r + 1) * row_len;
        if !named && !same_bits(&cache_after[range.clone()], &problem.state[range]) {
            return Err(format!(
                "cache row {r}, named by no batch row, was modified"
            ));
        }
    }
    let out_len = problem.channels * problem.head_dim;
    for (i, &idx) in indices.iter().enumerate() {
        if idx < 0
            && got.out[i * out_len..(i + 1) * out_len]
                .iter()
                .any(|&v| v != 0.0)
        {
            return Err(format!("padding row {i} has a non-zero output"));
        }
    }
    Ok(())
}

/// The f64 oracle on one step problem, its inputs rounded to `T`; the cache
/// after the step is the result's final states.
fn step_oracle<T: DeviceElement>(problem: &StepProblem) -> Result<ScanOutput<f64, f64>> {
    let tensors = problem.tensors::<T>();
    let mut state: Vec<f64> = problem.state.iter().map(|&v| v as f64).collect();
    let out = match problem.family {
        Family::Mamba1 => ssm_reference::mamba1_step(&problem.mamba1(&tensors), &mut state)?,
        Family::Mamba2 => ssm_reference::mamba2_step(&problem.mamba2(&tensors), &mut state)?,
    };
    Ok(ScanOutput {
        out: out.out,
        final_states: Some(state),
    })
}

fn step_as<T: DeviceElement>(problem: &StepProblem, ctx: &Ctx<'_>) -> Judged {
    let tensors = problem.tensors::<T>();
    let envelope = || match problem.family {
        Family::Mamba1 => mamba1_step_envelope(&problem.mamba1(&tensors), &problem.state),
        Family::Mamba2 => mamba2_step_envelope(&problem.mamba2(&tensors), &problem.state),
    };
    let magnitude = || {
        step_oracle::<T>(&StepProblem {
            x: problem.x.iter().map(|v| v.abs()).collect(),
            b: problem.b.iter().map(|v| v.abs()).collect(),
            c: problem.c.iter().map(|v| v.abs()).collect(),
            d: problem
                .d
                .as_ref()
                .map(|d| d.iter().map(|v| v.abs()).collect()),
            state: problem.state.iter().map(|v| v.abs()).collect(),
            ..problem.clone()
        })
        .ok()
    };
    let shifted = || {
        step_oracle::<T>(&StepProblem {
            a: shift_rates(&problem.a),
            ..problem.clone()
        })
        .ok()
    };
    let runs = ConditioningRuns::of(magnitude, shifted);
    let oracle = || step_oracle::<T>(problem);
    let mut referee = Referee::new(Target::Step, problem.describe(), oracle, envelope, runs)?;
    let reduction = problem.d_state + problem.head_dim;
    let budget = |env: &Envelope| f32_budget(T::DTYPE, 0.0, reduction, env);
    for backend in cpu_then_cuda(ctx, StepBackend::Cpu, StepBackend::Cuda) {
        let name = match backend {
            StepBackend::Cpu => crate::impls::StepImpl::Cpu.name(problem.family),
            StepBackend::Cuda => crate::impls::StepImpl::Cuda.name(problem.family),
        };
        let is_cuda = backend == StepBackend::Cuda;
        // `judge` consumes the result; keep it and the cache for the invariants.
        let mut kept = None;
        let run = || {
            let (result, cache) = run_step(problem, &tensors, backend, ctx);
            kept = Some((result.clone(), cache));
            result
        };
        referee.judge(&name, F32_MAX, Some(T::DTYPE), budget, is_cuda, run)?;
        if let Some((got, cache_after)) = kept {
            step_invariants(problem, &got, &cache_after)
                .map_err(|d| referee.finding(&name, None, d))?;
        }
    }
    Ok(referee.outcome)
}

fn oracle_panic(target: Target, problem: &str, message: String) -> Finding {
    Finding {
        target,
        implementation: "oracle".into(),
        problem: problem.to_string(),
        class: None,
        detail: format!("panicked: {message}"),
    }
}
