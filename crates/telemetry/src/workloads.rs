//! The reference workloads of docs/DESIGN.md §6 and the sweeps around them.
//!
//! Options follow the layers they come from: Mamba-1 blocks call the scan with
//! z, D, delta_bias and softplus and no final state; Mamba-2 blocks call SSD
//! with D (per head), dt_bias and softplus, no z (the gate is fused into the
//! following norm) and no final state. With these options the traffic model
//! reproduces the floors of docs/DESIGN.md's table (tested below).

use ssm_core::DType;

use crate::problem::{
    Mamba1ScanShape, Mamba1StepShape, Mamba2StepShape, Problem, SkipKind, SsdShape,
};

/// One named workload with the time mamba_ssm / Triton took on the H100 (docs/DESIGN.md §6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Workload {
    /// The workload's name (`M2-2.7B`, `M1-small`, ...).
    pub name: &'static str,
    /// Its shape, element type and options.
    pub problem: Problem,
    /// The best time of the existing implementation, in ms, as docs/DESIGN.md measured it.
    pub mamba_ssm_ms: f64,
}

/// Mamba-1 scan with the options of a Mamba-1 block.
pub fn mamba1_block_scan(
    batch: usize,
    d_inner: usize,
    d_state: usize,
    seqlen: usize,
    dtype: DType,
) -> Problem {
    Problem::Mamba1Scan(Mamba1ScanShape {
        batch,
        d_inner,
        d_state,
        seqlen,
        groups: Some(1),
        dtype,
        z: true,
        d: true,
        delta_bias: true,
        softplus: true,
        initial_states: false,
        final_states: false,
    })
}

/// SSD with the options of a Mamba-2 block (chunk 256, Triton's best on these shapes).
pub fn mamba2_block_ssd(
    batch: usize,
    seqlen: usize,
    heads: usize,
    head_dim: usize,
    d_state: usize,
    groups: usize,
    dtype: DType,
) -> Problem {
    Problem::Ssd(SsdShape {
        batch,
        seqlen,
        heads,
        head_dim,
        d_state,
        groups,
        chunk_size: 256,
        dtype,
        z: false,
        d: SkipKind::PerHead,
        dt_bias: true,
        softplus: true,
        initial_states: false,
        final_states: false,
    })
}

/// A Mamba-1 decode step (D, dt_bias, softplus; no z, as in docs/DESIGN.md's Triton numbers).
pub fn mamba1_decode(batch: usize, d_inner: usize, d_state: usize, dtype: DType) -> Problem {
    Problem::Mamba1Step(Mamba1StepShape {
        batch,
        d_inner,
        d_state,
        groups: 1,
        dtype,
        z: false,
        d: true,
        dt_bias: true,
        softplus: true,
    })
}

/// A Mamba-2 decode step (D per head, dt_bias, softplus, no z).
pub fn mamba2_decode(
    batch: usize,
    heads: usize,
    head_dim: usize,
    d_state: usize,
    dtype: DType,
) -> Problem {
    Problem::Mamba2Step(Mamba2StepShape {
        batch,
        heads,
        head_dim,
        d_state,
        groups: 1,
        dtype,
        z: false,
        d: SkipKind::PerHead,
        dt_bias: true,
        softplus: true,
    })
}

/// The rows of docs/DESIGN.md §6, in its order.
pub fn reference_workloads() -> Vec<Workload> {
    use DType::Bf16;
    vec![
        Workload {
            name: "M1-2.8B",
            problem: mamba1_block_scan(4, 5120, 16, 4096, Bf16),
            mamba_ssm_ms: 1.46,
        },
        Workload {
            name: "M1-small",
            problem: mamba1_block_scan(8, 2048, 16, 2048, Bf16),
            mamba_ssm_ms: 0.60,
        },
        Workload {
            name: "M2-2.7B",
            problem: mamba2_block_ssd(4, 4096, 80, 64, 128, 1, Bf16),
            mamba_ssm_ms: 0.72,
        },
        Workload {
            name: "M2-long",
            problem: mamba2_block_ssd(1, 65536, 32, 64, 128, 1, Bf16),
            mamba_ssm_ms: 1.56,
        },
        Workload {
            name: "M2-groups",
            problem: mamba2_block_ssd(4, 4096, 32, 128, 128, 8, Bf16),
            mamba_ssm_ms: 0.86,
        },
        Workload {
            name: "M2-decode",
            problem: mamba2_decode(256, 80, 64, 128, Bf16),
            mamba_ssm_ms: 0.575,
        },
        Workload {
            name: "M1-decode",
            problem: mamba1_decode(256, 5120, 16, Bf16),
            mamba_ssm_ms: 0.139,
        },
    ]
}

/// The workload named `name`.
pub fn reference_workload(name: &str) -> Option<Workload> {
    reference_workloads().into_iter().find(|w| w.name == name)
}

/// Sequence lengths of the L sweeps: 512 to 65536 by factors of 2.
pub fn seqlen_sweep() -> Vec<usize> {
    (9..=16).map(|k| 1usize << k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roofline::{Ceilings, Floor, Limiter};
    use crate::traffic::cost;

    fn floor(name: &str) -> Floor {
        let w = reference_workload(name).unwrap();
        Floor::of(
            &cost(&w.problem),
            &Ceilings::datasheet("NVIDIA H100 80GB HBM3"),
        )
    }

    /// `value` rounds to `expected` at the precision docs/DESIGN.md prints it with.
    fn rounds_to(value: f64, expected: f64, decimals: i32) -> bool {
        let scale = 10f64.powi(decimals);
        (value * scale).round() / scale == expected
    }

    #[test]
    fn design_md_floors_are_reproduced() {
        let m1 = floor("M1-2.8B");
        assert!(
            rounds_to(m1.bytes_ms, 0.22, 2),
            "M1-2.8B bytes {}",
            m1.bytes_ms
        );
        assert!(rounds_to(m1.exp_ms, 0.32, 2), "M1-2.8B exp {}", m1.exp_ms);
        assert_eq!(
            m1.limiter,
            Limiter::Exp,
            "the scan is exp-bound (docs/DESIGN.md §6)"
        );

        let m2 = floor("M2-2.7B");
        assert!(
            rounds_to(m2.bytes_ms, 0.116, 3),
            "M2-2.7B bytes {}",
            m2.bytes_ms
        );
        assert!(
            (0.10..0.12).contains(&m2.mma_ms),
            "bf16 MMA ~0.11 ms: {}",
            m2.mma_ms
        );

        // The rows quoted by their bytes time alone, to two decimals.
        for (name, bytes_ms) in [("M1-small", 0.09), ("M2-long", 0.19), ("M2-groups", 0.11)] {
            let f = floor(name);
            assert!(rounds_to(f.bytes_ms, bytes_ms, 2), "{name} {}", f.bytes_ms);
        }
    }

    #[test]
    fn decode_rows_match_the_quoted_bandwidths() {
        // docs/DESIGN.md: Triton's M2 step at b=256 takes 0.575 ms = 2.34 TB/s and the M1
        // step 0.139 ms = 1.26 TB/s; the floor is the state bytes at 3.0 TB/s.
        for (name, tb_per_s) in [("M2-decode", 2.34), ("M1-decode", 1.26)] {
            let w = reference_workload(name).unwrap();
            let c = cost(&w.problem);
            let achieved = c.bytes() as f64 / (w.mamba_ssm_ms * 1e-3) / 1e12;
            assert!(
                (achieved - tb_per_s).abs() < 0.01,
                "{name}: {achieved} TB/s"
            );
            let state = c.tensors.iter().find(|t| t.name == "state").unwrap().bytes;
            let f = floor(name);
            assert_eq!(f.limiter, Limiter::Bytes);
            // The floor is the state (read and written) plus the small per-token tensors.
            let state_ms = 2.0 * state as f64 / 3.0e12 * 1e3;
            assert!(
                f.bytes_ms >= state_ms && f.bytes_ms < 1.05 * state_ms,
                "{name}"
            );
        }
    }

    #[test]
    fn seqlen_sweep_spans_512_to_65536() {
        let s = seqlen_sweep();
        assert_eq!((s[0], *s.last().unwrap(), s.len()), (512, 65536, 8));
    }
}
