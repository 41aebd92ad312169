//! Writes the regression-gate fixtures under `crates/telemetry/tests/fixtures/gate/`:
//! a baseline, a new set that must pass (faster, and slower only within the
//! noise band), and one set per kind of regression (each must fail on that kind
//! alone). Every derived number goes through `BenchResult::new`, so the fixtures
//! are what a real producer would write.
//!
//! ```text
//! cargo run -p ssm-telemetry --example make_gate_fixtures
//! ```

use std::path::Path;

use ssm_core::DType;
use ssm_telemetry::ncu::DramBytes;
use ssm_telemetry::record::{
    DeviceInfo, KernelRecord, Measurement, ResultSet, RunInfo, TimingMethod, TimingStats,
};
use ssm_telemetry::sram::{LaunchShape, SmLimits, SramUse};
use ssm_telemetry::workloads::{mamba1_block_scan, reference_workload};
use ssm_telemetry::{BenchResult, Ceilings, Problem};

/// The knobs a fixture turns.
#[derive(Clone, Copy)]
struct Knobs {
    time_scale: f64,
    registers: u32,
    static_smem: u32,
    local_bytes: u32,
    spill_bytes: u32,
    bytes_scale: f64,
}

const BASE: Knobs = Knobs {
    time_scale: 1.0,
    registers: 40,
    static_smem: 1024,
    local_bytes: 0,
    spill_bytes: 0,
    bytes_scale: 1.04,
};

/// Samples around `median` with a +-1% spread (p10..p90 about 1.6% of the median).
fn samples(median: f64) -> Vec<f64> {
    (0..21)
        .map(|i| median * (1.0 + 0.001 * (i as f64 - 10.0)))
        .collect()
}

fn gpu_result(
    implementation: &str,
    workload: &str,
    problem: Problem,
    base_ms: f64,
    kernel: &str,
    k: Knobs,
) -> BenchResult {
    let timing =
        TimingStats::from_samples(TimingMethod::CudaEvents, &samples(base_ms * k.time_scale))
            .expect("positive samples");
    let resources = ssm_gpu::KernelResources {
        registers: k.registers,
        static_smem_bytes: k.static_smem,
        local_bytes: k.local_bytes,
        max_threads_per_block: 1024,
        max_dynamic_smem_bytes: 0,
    };
    let ptxas = ssm_gpu::PtxasFunction {
        name: kernel.into(),
        entry: true,
        registers: k.registers,
        spill_store_bytes: k.spill_bytes / 2,
        spill_load_bytes: k.spill_bytes - k.spill_bytes / 2,
        smem_bytes: k.static_smem,
        ..Default::default()
    };
    let sram = SramUse::new(
        &resources,
        Some(&ptxas),
        LaunchShape {
            threads_per_block: 256,
            dynamic_smem_bytes: 0,
        },
        &SmLimits::H100_SXM,
    );
    let kernels = vec![KernelRecord {
        sram: Some(sram),
        ncu_duration_ms: Some(base_ms * k.time_scale),
        ..KernelRecord::named(kernel)
    }];
    let mut r = BenchResult::new(
        Measurement::forward(implementation, workload, problem, timing, kernels),
        &Ceilings::datasheet("NVIDIA H100 80GB HBM3"),
    );
    let measured = (r.hbm.model_bytes as f64 * k.bytes_scale) as u64;
    r.kernels[0].dram = Some(DramBytes {
        read: measured * 2 / 3,
        write: measured - measured * 2 / 3,
    });
    r.refresh_measured_bytes();
    r
}

fn set(decode: Knobs, scan: Knobs) -> ResultSet {
    let mut s = ResultSet::new(
        RunInfo {
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            dirty: false,
            kernels_hash: "fixture-kernels-hash".into(),
            created_unix_s: 1_767_225_600,
            tool: "make_gate_fixtures".into(),
            notes: vec!["fixture for the regression gate tests".into()],
        },
        DeviceInfo {
            name: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: Some("9.0".into()),
            sm_count: Some(132),
            driver_version: Some("580.159.04".into()),
            ..Default::default()
        },
        &Ceilings::datasheet("NVIDIA H100 80GB HBM3"),
    );
    let m2 = reference_workload("M2-decode").expect("docs/DESIGN.md workload");
    s.results.push(gpu_result(
        "mamba2-ssd.decode.cuda",
        m2.name,
        m2.problem,
        0.52,
        "mamba2_decode_bf16",
        decode,
    ));
    let problem = mamba1_block_scan(1, 1536, 16, 4096, DType::Bf16);
    s.results.push(gpu_result(
        "mamba1-scan.cuda",
        "L-sweep/L=4096",
        problem,
        0.21,
        "mamba1_scan_fwd",
        scan,
    ));
    s
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gate");
    std::fs::create_dir_all(&dir).expect("fixture folder");
    let write = |name: &str, s: &ResultSet| {
        s.write(&dir.join(name)).expect("write fixture");
        println!("wrote {name}");
    };
    write("baseline.json", &set(BASE, BASE));
    // Passing: the decode kernel 4% slower (inside 5% + spread), the scan 10% faster,
    // DRAM bytes 1% more (inside the 2% tolerance), fewer registers.
    write(
        "pass.json",
        &set(
            Knobs {
                time_scale: 1.04,
                bytes_scale: 1.05,
                registers: 38,
                ..BASE
            },
            Knobs {
                time_scale: 0.9,
                ..BASE
            },
        ),
    );
    write(
        "slower.json",
        &set(
            Knobs {
                time_scale: 1.12,
                ..BASE
            },
            BASE,
        ),
    );
    write(
        "more_registers.json",
        &set(
            BASE,
            Knobs {
                registers: 48,
                ..BASE
            },
        ),
    );
    write(
        "more_smem.json",
        &set(
            BASE,
            Knobs {
                static_smem: 2048,
                ..BASE
            },
        ),
    );
    write(
        "spills.json",
        &set(
            BASE,
            Knobs {
                local_bytes: 64,
                spill_bytes: 32,
                ..BASE
            },
        ),
    );
    write(
        "more_bytes.json",
        &set(
            Knobs {
                bytes_scale: 1.25,
                ..BASE
            },
            BASE,
        ),
    );
    let mut missing = set(BASE, BASE);
    missing.results.truncate(1);
    write("missing.json", &missing);
}
