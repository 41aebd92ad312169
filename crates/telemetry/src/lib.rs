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
