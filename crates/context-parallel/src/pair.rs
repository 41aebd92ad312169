//! The pair algebra of a segment (docs/CONTEXT-PARALLEL.md §2).
//!
//! A rank's segment maps the state entering it to the state leaving it by an
//! affine map `S_out = D * S_in + F`: `D` the segment's total decay
//! (`exp(sum a_t)`), `F` the state the segment ends in from a zero start. Both
//! families have this form; they differ in the shape of `D`:
//!
//! - SSD: one scalar per (sequence, head) acting on a `P x N` state
//!   (`group = P N` state elements per decay);
//! - Mamba-1: one decay per (sequence, channel, state index), elementwise on
//!   the `N`-vector (`group = 1`).
//!
//! Maps compose associatively ([`Pair::then`]), so the state entering every
//! rank is an exclusive scan over ranks, done sequentially (a ring) or in
//! `ceil(log2 R)` rounds (Hillis-Steele); both are here, on plain slices, and
//! in [`crate::exchange`] over a communicator. The backward runs the same scan
//! over the ranks in reverse order on `(D, G0)` pairs: `D` is diagonal, so the
//! adjoint map `G_in = D^T G_out + G0` has the same form.

/// The affine map `S -> decay * S + state` of one segment, for every carried row
/// at once. `state.len() == decay.len() * group`; `decay[i / group]` scales
/// `state[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// The segment's total decay `D`, one per `group` state elements.
    pub decay: Vec<f32>,
    /// The state `F` the segment ends in from a zero start (`decay.len() * group`).
    pub state: Vec<f32>,
}

impl Pair {
    /// The identity map (an empty segment): decay 1, state 0.
    pub fn identity(decays: usize, group: usize) -> Pair {
        Pair {
            decay: vec![1.0; decays],
            state: vec![0.0; decays * group],
        }
    }

    /// A map that forgets its input (a segment with a sequence start in it, or
    /// one whose result nobody reads): decay 0.
    pub fn reset(state: Vec<f32>, decays: usize) -> Pair {
        Pair {
            decay: vec![0.0; decays],
            state,
        }
    }

    /// State elements per decay.
    pub fn group(&self) -> usize {
        self.state.len().checked_div(self.decay.len()).unwrap_or(0)
    }

    /// `self` followed by `next`: `S -> next.D (self.D S + self.F) + next.F`.
    pub fn then(&self, next: &Pair) -> Pair {
        let group = self.group();
        debug_assert_eq!(self.decay.len(), next.decay.len());
        debug_assert_eq!(self.state.len(), next.state.len());
        let decay = self
            .decay
            .iter()
            .zip(&next.decay)
            .map(|(a, b)| b * a)
            .collect();
        let state = self
            .state
            .iter()
            .zip(&next.state)
            .enumerate()
            .map(|(i, (fa, fb))| next.decay[i / group] * fa + fb)
            .collect();
        Pair { decay, state }
    }

    /// The map applied to a state: `D s + F`.
    pub fn apply(&self, s: &[f32]) -> Vec<f32> {
        let group = self.group();
        s.iter()
            .zip(&self.state)
            .enumerate()
            .map(|(i, (x, f))| self.decay[i / group] * x + f)
            .collect()
    }

    /// `decay ++ state`, the wire format of the exchange.
    pub fn to_wire(&self) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.decay.len() + self.state.len());
        v.extend_from_slice(&self.decay);
        v.extend_from_slice(&self.state);
        v
    }

    /// Inverse of [`Pair::to_wire`] for `decays` decays.
    pub fn from_wire(wire: &[f32], decays: usize) -> Pair {
        Pair {
            decay: wire[..decays].to_vec(),
            state: wire[decays..].to_vec(),
        }
    }
}

/// Exclusive scan, sequential (the ring's order): `out[r] = p[0] then .. then p[r-1]`,
/// `out[0]` the identity.
pub fn exclusive_scan_sequential(pairs: &[Pair]) -> Vec<Pair> {
    let Some(first) = pairs.first() else {
        return Vec::new();
    };
    let mut acc = Pair::identity(first.decay.len(), first.group());
    let mut out = Vec::with_capacity(pairs.len());
    for p in pairs {
        out.push(acc.clone());
        acc = acc.then(p);
    }
    out
}

/// Exclusive scan in `ceil(log2 R)` rounds (Hillis-Steele), exactly the rounds
/// [`crate::exchange`] runs over a communicator: in round `d = 1, 2, 4, ..`
/// element `r` receives the inclusive aggregate of `r - d` and prepends it to
/// both its inclusive and its exclusive aggregate. Same result as
/// [`exclusive_scan_sequential`] up to rounding (the products associate
/// differently).
pub fn exclusive_scan_log_depth(pairs: &[Pair]) -> Vec<Pair> {
    let Some(first) = pairs.first() else {
        return Vec::new();
    };
    let (decays, group) = (first.decay.len(), first.group());
    let mut incl: Vec<Pair> = pairs.to_vec();
    let mut excl: Vec<Pair> = vec![Pair::identity(decays, group); pairs.len()];
    let mut d = 1;
    while d < pairs.len() {
        let received: Vec<Option<Pair>> = (0..pairs.len())
            .map(|r| r.checked_sub(d).map(|src| incl[src].clone()))
            .collect();
        for (r, y) in received.into_iter().enumerate() {
            if let Some(y) = y {
                excl[r] = y.then(&excl[r]);
                incl[r] = y.then(&incl[r]);
            }
        }
        d *= 2;
    }
    excl
}

/// The reverse exclusive scan of the backward: `out[r] = p[R-1] then .. then
/// p[r+1]` (the gradient entering rank `r`'s end from every later rank),
/// `out[R-1]` the identity. The sequential scan over the reversed order.
pub fn reverse_exclusive_scan(pairs: &[Pair]) -> Vec<Pair> {
    let reversed: Vec<Pair> = pairs.iter().rev().cloned().collect();
    let mut out = exclusive_scan_sequential(&reversed);
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(seed: u32, decays: usize, group: usize) -> Pair {
        // A small LCG: the tests need varied values, not statistics.
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
        let mut next = || {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 8) as f32 / (1u32 << 24) as f32
        };
        Pair {
            decay: (0..decays).map(|_| next()).collect(),
            state: (0..decays * group).map(|_| next() * 2.0 - 1.0).collect(),
        }
    }

    #[test]
    fn identity_is_neutral_and_composition_applies_in_order() {
        let p = pair(1, 3, 2);
        let id = Pair::identity(3, 2);
        assert_eq!(id.then(&p), p);
        assert_eq!(p.then(&id), p);
        let q = pair(2, 3, 2);
        let s: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
        let two_steps = q.apply(&p.apply(&s));
        let composed = p.then(&q).apply(&s);
        for (a, b) in two_steps.iter().zip(&composed) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn a_reset_forgets_what_came_before() {
        let p = pair(3, 2, 4);
        let r = Pair::reset(vec![0.5; 8], 2);
        assert_eq!(p.then(&r), Pair::reset(vec![0.5; 8], 2));
    }

    #[test]
    fn wire_round_trip() {
        let p = pair(4, 5, 3);
        assert_eq!(Pair::from_wire(&p.to_wire(), 5), p);
    }
}
