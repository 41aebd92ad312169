//! The pair algebra's scans: sequential == log-depth (to rounding) == the f64
//! fold, and each communicator form gives exactly its slice form's bits, in
//! both rank orders. 64 cases per property, `SSM_PROPTEST_CASES=N` for more.

use proptest::prelude::*;
use ssm_context_parallel::exchange::exclusive_scan;
use ssm_context_parallel::pair::{
    exclusive_scan_log_depth, exclusive_scan_sequential, reverse_exclusive_scan,
};
use ssm_context_parallel::{Exchange, Pair, ThreadComm};

#[path = "../../mamba1-scan/tests/support/proptest_cases.rs"]
mod proptest_cases;

/// Decays in [0, 1] with exact 0 (a sequence start) and 1 (an empty segment) common.
fn decay() -> impl Strategy<Value = f32> {
    prop_oneof![1 => Just(0.0f32), 1 => Just(1.0f32), 4 => 0.0f32..1.0]
}

fn pairs() -> impl Strategy<Value = Vec<Pair>> {
    (1usize..=9, 1usize..=4, 1usize..=6).prop_flat_map(|(ranks, decays, group)| {
        prop::collection::vec(
            (
                prop::collection::vec(decay(), decays),
                prop::collection::vec(-2.0f32..2.0, decays * group),
            )
                .prop_map(|(decay, state)| Pair { decay, state }),
            ranks,
        )
    })
}

/// The f64 exclusive fold, the exact answer both scans round.
fn fold_f64(pairs: &[Pair]) -> Vec<(Vec<f64>, Vec<f64>)> {
    let group = pairs[0].group();
    let mut d: Vec<f64> = vec![1.0; pairs[0].decay.len()];
    let mut s: Vec<f64> = vec![0.0; pairs[0].state.len()];
    let mut out = Vec::new();
    for p in pairs {
        out.push((d.clone(), s.clone()));
        for (i, x) in s.iter_mut().enumerate() {
            *x = f64::from(p.decay[i / group]) * *x + f64::from(p.state[i]);
        }
        for (x, &pd) in d.iter_mut().zip(&p.decay) {
            *x *= f64::from(pd);
        }
    }
    out
}

fn close(a: &Pair, want: &(Vec<f64>, Vec<f64>)) -> bool {
    // Each output is a sum of at most R products of at most R factors in [0, 1]
    // times |state| <= 2: its rounding is below R^2 eps32 * 2 R absolutely.
    let tol = 1e-5;
    a.decay
        .iter()
        .zip(&want.0)
        .chain(a.state.iter().zip(&want.1))
        .all(|(&x, &y)| (f64::from(x) - y).abs() <= tol)
}

proptest! {
    #![proptest_config(proptest_cases::config(64, None))]

    #[test]
    fn sequential_and_log_depth_scans_agree(ps in pairs()) {
        let exact = fold_f64(&ps);
        let seq = exclusive_scan_sequential(&ps);
        let log = exclusive_scan_log_depth(&ps);
        for r in 0..ps.len() {
            prop_assert!(close(&seq[r], &exact[r]), "sequential, rank {r}");
            prop_assert!(close(&log[r], &exact[r]), "log-depth, rank {r}");
        }
        // The first rank gets the identity, exactly.
        prop_assert_eq!(&seq[0], &Pair::identity(ps[0].decay.len(), ps[0].group()));
        prop_assert_eq!(&log[0], &seq[0]);
        let rev = reverse_exclusive_scan(&ps);
        let mut reversed = ps.clone();
        reversed.reverse();
        let mut want = exclusive_scan_sequential(&reversed);
        want.reverse();
        prop_assert_eq!(rev, want);
    }

    #[test]
    fn every_exchange_over_thread_ranks_is_its_slice_form(ps in pairs(), reverse in any::<bool>()) {
        let mut order = ps.clone();
        if reverse {
            order.reverse();
        }
        let seq = exclusive_scan_sequential(&order);
        let log = exclusive_scan_log_depth(&order);
        for exchange in [Exchange::Ring, Exchange::LogDepth, Exchange::AllGather] {
            let got = ThreadComm::run(ps.len(), |c| {
                exclusive_scan(c, &ps[ssm_context_parallel::Communicator::rank(c)], exchange, reverse)
            });
            for (rank, g) in got.into_iter().enumerate() {
                let g = g.unwrap();
                let pos = if reverse { ps.len() - 1 - rank } else { rank };
                let want = if exchange == Exchange::LogDepth { &log[pos] } else { &seq[pos] };
                prop_assert_eq!(&g, want, "{:?} rank {}", exchange, rank);
            }
        }
    }
}
