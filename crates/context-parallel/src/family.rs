//! The context-parallel forward and backward of a segment, written once over
//! what differs between the families ([`CpFamily`]: `scan.rs` for the Mamba-1
//! selective scan, `ssd.rs` for the Mamba-2 SSD): the argument check shared by
//! every rank, the plan, the closures the two-pass driver (`driver.rs`) runs,
//! and the sum of the parameter gradients over ranks.

use crate::comm::Communicator;
use crate::driver::{self, Shapes};
use crate::plan::{agree_plan, Plan, Signature};
use crate::{check_local_args, check_rows, num_seqs, CpError, CpOptions, Pass2, Segment};
use ssm_core::ScanOutput;
use ssm_gpu::DeviceElement;

/// What the local call's parameters say about the call as a whole.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub batch: usize,
    /// This rank's tokens.
    pub seqlen: usize,
    /// `cu_seqlens` / `initial_states` set on the local parameters (both belong
    /// in the [`Segment`]).
    pub local_varlen: bool,
    pub local_initial_states: bool,
    pub return_final_states: bool,
}

/// One family of the context-parallel calls.
pub(crate) trait CpFamily {
    /// The plain call's parameters (`SelectiveScanParams`, `SsdParams`).
    type Params<'a, T: 'a>;
    /// The plain call's backend.
    type Backend<'g>: Copy;
    /// The plain backward's gradients (`ScanGrads`, `SsdGrads`), in `T` and f32.
    type Grads<T>;

    fn frame<T>(p: &Self::Params<'_, T>) -> Frame;
    /// What every rank must agree on besides the segment lengths: the family,
    /// sizes and options of the call (the driver appends the backward's word).
    fn signature<T>(p: &Self::Params<'_, T>, seg: &Segment<'_>) -> Signature;
    fn shapes<T>(p: &Self::Params<'_, T>) -> Shapes;
    /// The local parameters' own checks.
    fn validate<T: DeviceElement>(p: &Self::Params<'_, T>) -> Result<(), CpError>;
    /// The local gradient input `d_out` against the local parameters.
    fn validate_d_out<T: DeviceElement>(
        p: &Self::Params<'_, T>,
        d_out: &[T],
    ) -> Result<(), CpError>;
    /// The decay of the whole local segment per carried row.
    fn segment_decay<T: DeviceElement>(p: &Self::Params<'_, T>, plan: &Plan) -> Vec<f32>;
    /// The additive pass 2: add the entering state's contribution.
    fn add_entering<T: DeviceElement>(
        p: &Self::Params<'_, T>,
        plan: &Plan,
        out: &mut ScanOutput<T, f32>,
        entering: &[f32],
    );
    /// The local call: this rank's tokens with the plan's cu_seqlens and the
    /// given initial states.
    fn local_params<'a, 'b: 'a, T: Copy>(
        p: &Self::Params<'b, T>,
        plan: &'a Plan,
        init: Option<&'a [f32]>,
        return_final: bool,
    ) -> Self::Params<'a, T>;
    fn forward<T: DeviceElement>(
        p: &Self::Params<'_, T>,
        backend: Self::Backend<'_>,
    ) -> ssm_core::Result<ScanOutput<T, f32>>;
    fn backward<T: DeviceElement>(
        p: &Self::Params<'_, T>,
        d_out: &[T],
        d_final_states: Option<&[f32]>,
        backend: Self::Backend<'_>,
    ) -> ssm_core::Result<Self::Grads<T>>;
    fn dinitial_states<T>(g: &Self::Grads<T>) -> Option<&[f32]>;
    /// The gradients of the whole problem from this rank's (`None` for an empty
    /// segment): the parameter gradients summed over ranks in rank order, the
    /// initial-state gradient of every sequence.
    fn finish_grads<T: DeviceElement>(
        p: &Self::Params<'_, T>,
        g: Option<Self::Grads<T>>,
        dinitial_states: Option<Vec<f32>>,
        comm: &dyn Communicator,
    ) -> Result<Self::Grads<T>, CpError>;
}

fn signature<F: CpFamily, T>(
    p: &F::Params<'_, T>,
    seg: &Segment<'_>,
    backward: Option<bool>,
) -> Signature {
    let mut s = F::signature(p, seg);
    s.push(match backward {
        None => 0,
        Some(false) => 1,
        // With d_final_states.
        Some(true) => 2,
    });
    s
}

fn local_check<F: CpFamily, T: DeviceElement>(
    p: &F::Params<'_, T>,
    seg: &Segment<'_>,
) -> Result<(), CpError> {
    let frame = F::frame(p);
    check_local_args(frame.local_varlen, frame.local_initial_states)?;
    F::validate(p)?;
    check_rows(
        "initial_states",
        seg.initial_states,
        num_seqs(seg, frame.batch),
        F::shapes(p).state_len,
    )
}

/// The plan every rank agrees on (or every rank's error): `check` is this
/// rank's argument check, `backward` says which call it is (`None`: the forward;
/// `Some(with d_final_states)`: the backward).
fn agree<F: CpFamily, T>(
    local: &F::Params<'_, T>,
    seg: &Segment<'_>,
    comm: &dyn Communicator,
    backward: Option<bool>,
    check: Result<(), CpError>,
) -> Result<Plan, CpError> {
    let frame = F::frame(local);
    let signature = signature::<F, T>(local, seg, backward);
    agree_plan(comm, seg, frame.seqlen, frame.batch, signature, check)
}

/// The driver's view of the call once the plan is agreed.
fn driver_call<'a, F: CpFamily, T>(
    local: &F::Params<'_, T>,
    seg: &Segment<'a>,
    comm: &'a dyn Communicator,
    plan: &'a Plan,
    opts: CpOptions,
) -> driver::Call<'a> {
    driver::Call {
        comm,
        plan,
        opts,
        shapes: F::shapes(local),
        user_initial: seg.initial_states,
        return_final: F::frame(local).return_final_states,
    }
}

/// The forward of this rank's segment (the families' `*_forward_cp`).
pub(crate) fn forward_cp<F: CpFamily, T: DeviceElement>(
    local: &F::Params<'_, T>,
    seg: &Segment<'_>,
    comm: &dyn Communicator,
    backend: F::Backend<'_>,
    opts: CpOptions,
) -> Result<ScanOutput<T, f32>, CpError> {
    let frame = F::frame(local);
    let check = local_check::<F, T>(local, seg);
    let plan = agree::<F, T>(local, seg, comm, None, check)?;
    let run = |init: Option<&[f32]>, rf: bool| -> Result<ScanOutput<T, f32>, CpError> {
        let p = F::local_params(local, &plan, init, rf);
        Ok(F::forward(&p, backend)?)
    };
    let add = |out: &mut ScanOutput<T, f32>, entering: &[f32]| -> Result<(), CpError> {
        F::add_entering(local, &plan, out, entering);
        Ok(())
    };
    let call = driver_call::<F, T>(local, seg, comm, &plan, opts);
    let mut out = driver::forward(
        call,
        &|| F::segment_decay(local, &plan),
        &run,
        (opts.pass2 == Pass2::AddContribution).then_some(&add as &driver::Correct<'_, T>),
    )?;
    if !frame.return_final_states {
        out.final_states = None;
    }
    Ok(out)
}

/// The backward of this rank's segment (the families' `*_backward_cp`).
pub(crate) fn backward_cp<F: CpFamily, T: DeviceElement>(
    local: &F::Params<'_, T>,
    seg: &Segment<'_>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    comm: &dyn Communicator,
    backend: F::Backend<'_>,
    opts: CpOptions,
) -> Result<F::Grads<T>, CpError> {
    let frame = F::frame(local);
    let sh = F::shapes(local);
    let check = local_check::<F, T>(local, seg).and_then(|()| {
        F::validate_d_out(local, d_out)?;
        if d_final_states.is_some() && !frame.return_final_states {
            return Err(CpError::Segment {
                arg: "d_final_states",
                reason: "given, but the forward does not return final states \
                         (set return_final_states, or pass None)"
                    .into(),
            });
        }
        check_rows(
            "d_final_states",
            d_final_states,
            num_seqs(seg, frame.batch),
            sh.state_len,
        )
    });
    let plan = agree::<F, T>(local, seg, comm, Some(d_final_states.is_some()), check)?;
    let run_fwd = |init: Option<&[f32]>, rf: bool| -> Result<ScanOutput<T, f32>, CpError> {
        let p = F::local_params(local, &plan, init, rf);
        Ok(F::forward(&p, backend)?)
    };
    let run_bwd =
        |init: Option<&[f32]>, rf: bool, d_final: Option<&[f32]>| -> Result<F::Grads<T>, CpError> {
            let p = F::local_params(local, &plan, init, rf);
            Ok(F::backward(&p, d_out, d_final, backend)?)
        };
    let call = driver_call::<F, T>(local, seg, comm, &plan, opts);
    let (g, dinitial) = driver::backward(
        call,
        d_final_states,
        &|| F::segment_decay(local, &plan),
        &run_fwd,
        &run_bwd,
        &|g: &F::Grads<T>| F::dinitial_states(g),
    )?;
    F::finish_grads(local, g, dinitial, comm)
}

/// A family's public forward and backward, over [`forward_cp`] and
/// [`backward_cp`] (the docs of each are at the invocation).
macro_rules! entry_points {
    ($family:ty, $params:ident, $grads:ident;
     $(#[$fwd_doc:meta])* fn $fwd:ident; $(#[$bwd_doc:meta])* fn $bwd:ident;) => {
        $(#[$fwd_doc])*
        pub fn $fwd<T: DeviceElement>(
            local: &$params<'_, T>,
            seg: &Segment<'_>,
            comm: &dyn Communicator,
            backend: Backend<'_>,
            opts: CpOptions,
        ) -> Result<ScanOutput<T, f32>, CpError> {
            $crate::family::forward_cp::<$family, T>(local, seg, comm, backend, opts)
        }

        $(#[$bwd_doc])*
        pub fn $bwd<T: DeviceElement>(
            local: &$params<'_, T>,
            seg: &Segment<'_>,
            d_out: &[T],
            d_final_states: Option<&[f32]>,
            comm: &dyn Communicator,
            backend: Backend<'_>,
            opts: CpOptions,
        ) -> Result<$grads<T, f32>, CpError> {
            $crate::family::backward_cp::<$family, T>(
                local,
                seg,
                d_out,
                d_final_states,
                comm,
                backend,
                opts,
            )
        }
    };
}
pub(crate) use entry_points;

/// The items of a [`CpFamily`] impl that read the parameter and gradient structs
/// by the field names both families share (`dims.batch`, `dims.seqlen`,
/// `cu_seqlens`, `initial_states`, `return_final_states`, `dinitial_states`),
/// and the plain forward and backward calls.
macro_rules! plain_calls {
    ($params:ident, $grads:ident, $forward:path, $backward:path) => {
        type Params<'a, T: 'a> = $params<'a, T>;
        type Backend<'g> = Backend<'g>;
        type Grads<T> = $grads<T, f32>;

        fn frame<T>(p: &$params<'_, T>) -> $crate::family::Frame {
            $crate::family::Frame {
                batch: p.dims.batch,
                seqlen: p.dims.seqlen,
                local_varlen: p.cu_seqlens.is_some(),
                local_initial_states: p.initial_states.is_some(),
                return_final_states: p.return_final_states,
            }
        }

        fn local_params<'a, 'b: 'a, T: Copy>(
            p: &$params<'b, T>,
            plan: &'a Plan,
            init: Option<&'a [f32]>,
            return_final: bool,
        ) -> $params<'a, T> {
            $params {
                cu_seqlens: plan.local_cu.as_deref(),
                initial_states: init,
                return_final_states: return_final,
                ..*p
            }
        }

        fn forward<T: DeviceElement>(
            p: &$params<'_, T>,
            backend: Backend<'_>,
        ) -> ssm_core::Result<ScanOutput<T, f32>> {
            $forward(p, backend)
        }

        fn backward<T: DeviceElement>(
            p: &$params<'_, T>,
            d_out: &[T],
            d_final_states: Option<&[f32]>,
            backend: Backend<'_>,
        ) -> ssm_core::Result<$grads<T, f32>> {
            $backward(p, d_out, d_final_states, backend)
        }

        fn dinitial_states<T>(g: &$grads<T, f32>) -> Option<&[f32]> {
            g.dinitial_states.as_deref()
        }
    };
}
pub(crate) use plain_calls;
