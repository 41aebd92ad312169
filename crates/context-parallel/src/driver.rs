//! The two-pass protocol shared by both families (docs/CONTEXT-PARALLEL.md §4):
//! what each rank runs, in which order, and which collective comes between.
//! The family modules supply closures that run the plain call on the local
//! segment with given initial states, final-state flag and final-state
//! gradient, and the segment's total decay.

use crate::comm::Communicator;
use crate::exchange::{agree, exclusive_scan, gather_owned_rows};
use crate::pair::Pair;
use crate::plan::Plan;
use crate::{CpError, CpOptions};
use ssm_core::ScanOutput;

/// The plain forward on the local segment: `(initial states, return final states)`.
pub(crate) type RunForward<'a, T> =
    dyn Fn(Option<&[f32]>, bool) -> Result<ScanOutput<T, f32>, CpError> + 'a;
/// The plain backward on the local segment: `(initial states, return final
/// states, final-state gradient)`.
pub(crate) type RunBackward<'a, G> =
    dyn Fn(Option<&[f32]>, bool, Option<&[f32]>) -> Result<G, CpError> + 'a;

/// The additive pass 2: add the contribution of the carried entering state
/// (`carry_rows` rows) to pass 1's zero-start output and final states.
pub(crate) type Correct<'a, T> =
    dyn Fn(&mut ScanOutput<T, f32>, &[f32]) -> Result<(), CpError> + 'a;

/// Sizes of one carried row: its state elements and its decays.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shapes {
    pub state_len: usize,
    pub decays_per_row: usize,
}

impl Shapes {
    fn group(&self) -> usize {
        self.state_len / self.decays_per_row
    }
}

/// Rows of `global` (`row_len` each) for the given global sequences, or zeros.
fn rows_of(global: Option<&[f32]>, seqs: &[usize], row_len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(seqs.len() * row_len);
    for &k in seqs {
        match global {
            Some(g) => v.extend_from_slice(&g[k * row_len..(k + 1) * row_len]),
            None => v.extend(std::iter::repeat_n(0.0, row_len)),
        }
    }
    v
}

/// Overwrite local rows `rows[i]` of `local` with carried row `i` of `carried`.
fn put_carried(local: &mut [f32], rows: &[usize], carried: &[f32], row_len: usize) {
    for (i, &j) in rows.iter().enumerate() {
        local[j * row_len..(j + 1) * row_len]
            .copy_from_slice(&carried[i * row_len..(i + 1) * row_len]);
    }
}

/// Local rows `rows[i]` of `local`, as carried rows.
fn take_carried(local: &[f32], rows: &[usize], row_len: usize) -> Vec<f32> {
    rows.iter()
        .flat_map(|&j| local[j * row_len..(j + 1) * row_len].iter().copied())
        .collect()
}

/// Which end of the segment a carried state crosses: the head (a sequence
/// continuing from the previous rank) or the tail (one continuing into the next).
#[derive(Clone, Copy)]
enum End {
    Head,
    Tail,
}

/// A per-sequence argument of the local call: the user's rows for the local
/// sequences (`None`: zeros), with `carried` put in at the rows crossing `end`.
/// At the head these are the initial states (`carried` the entering states), at
/// the tail the final-state gradient (`carried` the leaving gradients). `None`
/// when there is neither user data nor a crossing row (exactly the plain call's
/// argument on one rank).
fn local_rows(
    plan: &Plan,
    shapes: Shapes,
    end: End,
    user: Option<&[f32]>,
    carried: Option<&[f32]>,
) -> Option<Vec<f32>> {
    let (crosses, rows) = match end {
        End::Head => (plan.head_continues(), &plan.head_rows),
        End::Tail => (plan.tail_continues(), &plan.tail_rows),
    };
    if user.is_none() && !crosses {
        return None;
    }
    let mut v = rows_of(user, &plan.local_seqs, shapes.state_len);
    if let Some(c) = carried {
        put_carried(&mut v, rows, c, shapes.state_len);
    }
    Some(v)
}

/// One state row per sequence of the whole problem, on every rank: sequence
/// `k`'s row of `local` (the local call's per-sequence result, at local row
/// `local_row[k]` where this rank computes it) from the rank that `owner[k]`
/// names, `fallback`'s row `k` (zeros without one) where no rank computes it.
/// The forward's final states (fallback: the initial states, passed through) and
/// the backward's initial-state gradients (fallback: the final-state gradient).
fn gather_sequences(
    comm: &dyn Communicator,
    shapes: Shapes,
    local: Option<&[f32]>,
    local_row: &[Option<usize>],
    owner: &[Option<usize>],
    fallback: Option<&[f32]>,
) -> Result<Vec<f32>, CpError> {
    let row = shapes.state_len;
    let mut mine = vec![0.0; owner.len() * row];
    if let Some(src) = local {
        for (k, j) in local_row.iter().enumerate() {
            if let Some(j) = j {
                mine[k * row..(k + 1) * row].copy_from_slice(&src[j * row..(j + 1) * row]);
            }
        }
    }
    gather_owned_rows(comm, &mine, owner, row, |k| rows_of(fallback, &[k], row))
}

fn zeros_carried(plan: &Plan, shapes: Shapes) -> Vec<f32> {
    vec![0.0; plan.carry_rows * shapes.state_len]
}

/// The forward exchange: pass 1 where a later rank needs this segment's map,
/// the scan, and the state entering this segment (`None` when no local row
/// continues a sequence). Returns pass 1's output too when it is already the
/// final answer (no row enters from before, so the true initial states are
/// the ones pass 1 ran with).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn forward_exchange<T>(
    comm: &dyn Communicator,
    plan: &Plan,
    opts: CpOptions,
    shapes: Shapes,
    user_initial: Option<&[f32]>,
    decay: &dyn Fn() -> Vec<f32>,
    run: &RunForward<'_, T>,
    additive: bool,
) -> Result<(Option<Vec<f32>>, Option<ScanOutput<T, f32>>), CpError> {
    let decays = plan.carry_rows * shapes.decays_per_row;
    let pass1 = || -> Result<(Pair, Option<ScanOutput<T, f32>>), CpError> {
        if plan.len() == 0 {
            // An empty segment passes the state through unchanged.
            return Ok((Pair::identity(decays, shapes.group()), None));
        }
        // The additive pass 2 corrects pass 1's output, so pass 1 runs wherever
        // a state enters; the rerun needs pass 1 only where a state leaves.
        let needed = plan.tail_continues() || (additive && plan.head_continues());
        if !needed {
            // Nobody reads this map: the next nonempty rank starts fresh sequences.
            return Ok((Pair::reset(zeros_carried(plan, shapes), decays), None));
        }
        let zero = plan.head_continues().then(|| zeros_carried(plan, shapes));
        let init = local_rows(plan, shapes, End::Head, user_initial, zero.as_deref());
        let out = run(init.as_deref(), true)?;
        let finals = out.final_states.as_deref().ok_or(CpError::Segment {
            arg: "backend",
            reason: "the local call returned no final states although asked to".into(),
        })?;
        let pair = if plan.tail_continues() {
            let state = take_carried(finals, &plan.tail_rows, shapes.state_len);
            let decay = if plan.decay_applies {
                decay()
            } else {
                vec![0.0; decays]
            };
            Pair { decay, state }
        } else {
            Pair::reset(zeros_carried(plan, shapes), decays)
        };
        let keep = !plan.head_continues() || additive;
        Ok((pair, keep.then_some(out)))
    };
    let (own, reuse) = agree(comm, pass1())?;
    debug_assert_eq!(own.group(), shapes.group());
    let before = exclusive_scan(comm, &own, opts.exchange, false)?;
    // The prefix map applied to the zero state before token 0.
    let entering = plan.head_continues().then_some(before.state);
    Ok((entering, reuse))
}

/// What the forward and the backward of one context-parallel call share: the
/// transport, the agreed plan, the options, the row sizes, the user's initial
/// states and whether the forward returns final states.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub comm: &'a dyn Communicator,
    pub plan: &'a Plan,
    pub opts: CpOptions,
    pub shapes: Shapes,
    pub user_initial: Option<&'a [f32]>,
    pub return_final: bool,
}

/// The context-parallel forward: out for the local tokens, final states of
/// every sequence (when asked) on every rank.
pub(crate) fn forward<T: Clone>(
    call: Call<'_>,
    decay: &dyn Fn() -> Vec<f32>,
    run: &RunForward<'_, T>,
    correct: Option<&Correct<'_, T>>,
) -> Result<ScanOutput<T, f32>, CpError> {
    let (comm, plan, opts, shapes) = (call.comm, call.plan, call.opts, call.shapes);
    let (user_initial, return_final) = (call.user_initial, call.return_final);
    let additive = correct.is_some();
    let (entering, pass1) =
        forward_exchange(comm, plan, opts, shapes, user_initial, decay, run, additive)?;
    let pass2 = || -> Result<ScanOutput<T, f32>, CpError> {
        if plan.len() == 0 {
            return Ok(ScanOutput {
                out: Vec::new(),
                final_states: None,
            });
        }
        match (pass1, correct, entering.as_deref()) {
            // No state enters: pass 1 ran with the true initial states.
            (Some(out), _, None) => Ok(out),
            // Additive: pass 1 from zero plus the entering state's contribution.
            (Some(mut out), Some(add), Some(e)) => {
                add(&mut out, e)?;
                Ok(out)
            }
            // Rerun with the true initial state.
            _ => {
                let init = local_rows(plan, shapes, End::Head, user_initial, entering.as_deref());
                run(init.as_deref(), return_final)
            }
        }
    };
    let local = agree(comm, pass2())?;
    let final_states = if return_final {
        let (rows, owner) = (&plan.final_local_row, &plan.final_owner);
        let fs = local.final_states.as_deref();
        Some(gather_sequences(
            comm,
            shapes,
            fs,
            rows,
            owner,
            user_initial,
        )?)
    } else {
        None
    };
    Ok(ScanOutput {
        out: local.out,
        final_states,
    })
}

/// The context-parallel backward's protocol. Returns the local call's
/// gradients (`None` on an empty segment) and, when the user gave initial
/// states, the initial-state gradient of every sequence.
#[allow(clippy::type_complexity)]
pub(crate) fn backward<T, G>(
    call: Call<'_>,
    user_d_final: Option<&[f32]>,
    decay: &dyn Fn() -> Vec<f32>,
    run_fwd: &RunForward<'_, T>,
    run_bwd: &RunBackward<'_, G>,
    dinit_of: &dyn Fn(&G) -> Option<&[f32]>,
) -> Result<(Option<G>, Option<Vec<f32>>), CpError> {
    let (comm, plan, opts, shapes) = (call.comm, call.plan, call.opts, call.shapes);
    let (user_initial, return_final) = (call.user_initial, call.return_final);
    // The forward's states entering this segment; pass 2 of the forward is not needed.
    let (entering, _) = forward_exchange(
        comm,
        plan,
        opts,
        shapes,
        user_initial,
        decay,
        run_fwd,
        false,
    )?;
    let init = local_rows(plan, shapes, End::Head, user_initial, entering.as_deref());
    let local_return_final = return_final || plan.tail_continues();
    let decays = plan.carry_rows * shapes.decays_per_row;
    let run = |leaving: Option<&[f32]>| {
        let d_final = local_rows(plan, shapes, End::Tail, user_d_final, leaving);
        run_bwd(init.as_deref(), local_return_final, d_final.as_deref())
    };
    // Pass B: where a row continues from the previous rank, its initial-state
    // gradient with no gradient arriving from later ranks (G0).
    let pass_b = || -> Result<(Pair, Option<G>), CpError> {
        if plan.len() == 0 {
            return Ok((Pair::identity(decays, shapes.group()), None));
        }
        if !plan.head_continues() {
            return Ok((Pair::reset(zeros_carried(plan, shapes), decays), None));
        }
        let zero = plan.tail_continues().then(|| zeros_carried(plan, shapes));
        let g = run(zero.as_deref())?;
        let dinit = dinit_of(&g).ok_or(CpError::Segment {
            arg: "backend",
            reason: "the local backward returned no initial-state gradient".into(),
        })?;
        let state = take_carried(dinit, &plan.head_rows, shapes.state_len);
        let decay = if plan.decay_applies {
            decay()
        } else {
            vec![0.0; decays]
        };
        // Without a continuing tail nothing arrives later: G0 is the answer.
        let done = (!plan.tail_continues()).then_some(g);
        Ok((Pair { decay, state }, done))
    };
    let (own, done) = agree(comm, pass_b())?;
    let after = exclusive_scan(comm, &own, opts.exchange, true)?;
    let pass_c = || -> Result<Option<G>, CpError> {
        if plan.len() == 0 {
            return Ok(None);
        }
        if let Some(g) = done {
            return Ok(Some(g));
        }
        let leaving = plan.tail_continues().then_some(&after.state[..]);
        run(leaving).map(Some)
    };
    let g = agree(comm, pass_c())?;
    let dinitial = match user_initial {
        None => None,
        Some(_) => {
            let di = g.as_ref().and_then(dinit_of);
            let (rows, owner) = (&plan.initial_local_row, &plan.initial_owner);
            Some(gather_sequences(
                comm,
                shapes,
                di,
                rows,
                owner,
                user_d_final,
            )?)
        }
    };
    Ok((g, dinitial))
}
