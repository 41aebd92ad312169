//! Benchmarks of every implementation (issue "Benchmarks and telemetry").
//!
//! - [`ceilings`]: the card's copy, bf16 MMA and exp2 ceilings, measured at the
//!   start of every run; every floor uses them.
//! - [`check`]: each GPU case's first call against the f64 oracle (sampled
//!   rows) before it is timed.
//! - [`suite`]: the cases: docs/DESIGN.md §6 workloads and the L / N / chunk / dtype
//!   sweeps, per backend (CUDA, CPU ports, f64 reference).
//! - [`inputs`]: fast, deterministic, realistic inputs.
//! - [`cpu`] / [`gpu`]: one call of a case on each backend (the GPU side on the
//!   kernel crates' device-resident entry points, rotating buffers past L2).
//! - [`events`]: CUDA-event timing for criterion's `iter_custom`.
//! - [`runner`]: measurement into `ssm_telemetry` result sets (NVML around the
//!   timed window, SRAM per kernel, output sanity), and the once-per-case launch
//!   for ncu.
//! - [`cli`]: `ssmk bench` / the `bench_suite` binary.
//!
//! The criterion benches live in `benches/` (`reference`, `cpu_ports`,
//! `gpu_kernels`); docs/BENCHMARKS.md says how to run them.

pub mod ceilings;
pub mod check;
pub mod cli;
pub mod cpu;
pub mod events;
pub mod gpu;
pub mod inputs;
pub mod runner;
pub mod suite;
