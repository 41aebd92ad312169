//! Telemetry for the SSM kernels: what a benchmark must cost, what it measured,
//! and whether it got worse.
//!
//! - [`problem`]: the shape, dtype and options of a benchmarked call.
//! - [`traffic`]: the minimum HBM bytes, MMA flops and exps of a call.
//! - [`roofline`]: the measured ceilings of docs/DESIGN.md §6 and the floor of a call.
//! - [`workloads`]: docs/DESIGN.md §6's reference workloads and the L sweep.
//! - [`sram`]: registers and shared memory per block, spills, occupancy.
//! - [`nvml`]: clocks, power, energy, temperature, throttling around a run.
//! - [`ncu`]: measured DRAM bytes per kernel from Nsight Compute's CSV.
//! - [`record`]: the versioned JSON result schema every producer writes.
//! - [`peers`]: mamba_ssm / fla timings from `ci/peers`, imported beside ours.
//! - [`gate`]: the regression gate.
//! - [`plot`]: SVG plots of result sets.
//! - [`cli`]: the `gate` / `plot` / `merge-ncu` / `show` front ends.
//!
//! The floor of a call: its minimum traffic and work at a card's ceilings. A
//! Mamba-1 decode step must read and write its whole f32 state, so bytes set it:
//!
//! ```
//! use ssm_core::DType;
//! use ssm_telemetry::roofline::{Ceilings, Floor, Limiter};
//! use ssm_telemetry::{traffic, workloads};
//!
//! let (b, d_inner, n) = (1, 5120, 16);
//! let step = workloads::mamba1_decode(b, d_inner, n, DType::Bf16);
//! let cost = traffic::cost(&step);
//! let state_bytes = (b * d_inner * n * 4) as u64;
//! assert!(cost.bytes() >= 2 * state_bytes); // read once, written once
//!
//! let floor = Floor::of(&cost, &Ceilings::datasheet("NVIDIA H200"));
//! assert_eq!(floor.limiter, Limiter::Bytes);
//! // A measured 7 us per step is this fraction of the floor:
//! let fraction = floor.fraction_of(0.007).unwrap();
//! assert!(fraction > 0.0 && fraction < 1.0);
//! ```

#![warn(missing_docs)]

pub mod cli;
pub mod error;
pub mod gate;
pub mod ncu;
pub mod nvml;
pub mod peers;
pub mod plot;
pub mod problem;
pub mod progress;
pub mod record;
pub mod roofline;
pub mod shape_arg;
pub mod sram;
pub mod traffic;
pub mod workloads;

pub use error::{Result, TelemetryError};
pub use problem::{Pass, Problem};
pub use record::{BenchResult, ResultSet};
pub use roofline::{Ceilings, Floor};
