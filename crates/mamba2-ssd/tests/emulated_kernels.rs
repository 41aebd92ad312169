//! The SSD forward kernels run on the CPU under the warp-instruction emulation
//! (`kernels/mamba2/ssd_emu.cuh`: one fiber per CUDA thread, `ldmatrix`,
//! `mma.sync` and shuffles computed from the PTX ISA's fragment layouts) and are
//! compared with an f64 recurrence by `kernels/mamba2/ssd_emu_check.cu`. This is
//! what checks fragment layouts and index arithmetic without a GPU, including the
//! experiment switches' code paths (docs/kernels/mamba2-ssd.md).
//!
//! Needs a host C++20 compiler (`$CXX`, else `g++`). Without one the tests skip
//! loudly, unless `SSM_REQUIRE_CXX=1` (set by `.ci/run`), which makes that a
//! failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kernels")
}

/// One emulated configuration: the kernel's defines and the problem to run.
struct Config {
    name: &'static str,
    /// Kernel file, entry point and namespace (renamed in the prepass object).
    kernel: &'static str,
    entry: &'static str,
    namespace: &'static str,
    threads: u32,
    p_tile: u32,
    /// Tile-shape defines shared by several configurations, then this one's own.
    tile: &'static [&'static str],
    defines: &'static [&'static str],
    /// Also emulate `ssd_chunk_cb.cu` (the fused kernel built with SSD_CB_GLOBAL=1).
    chunk_cb: bool,
    /// `H G seed nseg_max len0 [len1 ...]` of ssd_emu_check.
    args: &'static [&'static str],
}

fn compile(cxx: &str, dir: &Path, out: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(cxx);
    cmd.current_dir(dir)
        .args(["-std=c++20", "-O1", "-w", "-x", "c++", "-c"])
        .args(args)
        .args(["-o", out]);
    cmd
}

fn run_config(cxx: &str, c: &Config) {
    let k = kernels_dir().canonicalize().expect("kernels/");
    let m2 = k.join("mamba2");
    let dir = std::env::temp_dir().join(format!("ssm-emu-{}-{}", c.name, std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let emu = m2.join("ssd_emu.cuh").display().to_string();
    let inc = format!("-I{}", k.display());
    let defs: Vec<String> = c
        .tile
        .iter()
        .chain(c.defines)
        .map(|d| d.to_string())
        .collect();
    let kernel = m2.join(c.kernel).display().to_string();

    let with = |extra: &[String]| -> Vec<String> {
        let mut v = vec![inc.clone(), "-include".into(), emu.clone(), kernel.clone()];
        v.extend(defs.iter().cloned());
        v.extend(extra.iter().cloned());
        v
    };
    let state_entry = format!("{}_state", c.entry);
    let mut jobs = vec![
        ("main.o", with(&[])),
        (
            "state.o",
            with(&[
                "-DSSD_STATE_ONLY=1".into(),
                format!("-D{}={state_entry}", c.entry),
                format!("-D{}={}_st", c.namespace, c.namespace),
            ]),
        ),
    ];
    let mut driver = vec![
        inc.clone(),
        format!("-I{}", m2.display()),
        m2.join("ssd_emu_check.cu").display().to_string(),
        format!("-DEMU_MAIN_ENTRY={}", c.entry),
        format!("-DEMU_STATE_ENTRY={state_entry}"),
        format!("-DEMU_THREADS={}", c.threads),
        format!("-DEMU_PT={}", c.p_tile),
        "-DEMU_SMEM=300000".into(),
    ];
    driver.extend(defs.iter().cloned());
    if c.chunk_cb {
        driver.push("-DEMU_CB_ENTRY=ssd_chunk_cb".into());
        let mut cb = vec![
            inc.clone(),
            "-include".into(),
            emu.clone(),
            m2.join("ssd_chunk_cb.cu").display().to_string(),
        ];
        cb.extend(defs.iter().cloned());
        jobs.push(("cb.o", cb));
    }
    jobs.push(("drv.o", driver));

    // The objects compile in parallel (a few seconds each at -O1).
    let children: Vec<_> = jobs
        .iter()
        .map(|(out, args)| {
            let child = compile(cxx, &dir, out, args)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{}: starting {cxx}: {e}", c.name));
            (*out, child)
        })
        .collect();
    for (out, child) in children {
        let result = child.wait_with_output().unwrap();
        assert!(
            result.status.success(),
            "{}: compiling {out} failed:\n{}",
            c.name,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    let objects: Vec<&str> = jobs.iter().map(|(o, _)| *o).collect();
    let link = Command::new(cxx)
        .current_dir(&dir)
        .args(&objects)
        .args(["-o", "check"])
        .output()
        .unwrap();
    assert!(
        link.status.success(),
        "{}: link failed:\n{}",
        c.name,
        String::from_utf8_lossy(&link.stderr)
    );
    let run = Command::new(dir.join("check"))
        .args(c.args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{} ({}): {}", c.name, c.args.join(" "), stdout.trim());
    assert!(
        run.status.success() && stdout.contains("PASS"),
        "{}: the emulated kernel disagrees with the f64 recurrence:\n{stdout}\n{}",
        c.name,
        String::from_utf8_lossy(&run.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `c` under the emulation; without a host compiler, skips loudly as
/// `test`.
fn emulate(test: &str, c: &Config) {
    let Some(cxx) = ssm_gpu::test_cxx_or_skip(test) else {
        return;
    };
    run_config(&cxx, c);
}

/// bf16, two cp.async stages, every option on, final states; varlen with an empty
/// and a one-token sequence, sequences split into up to 3 segments (the prepass).
const FUSED_BF16: Config = Config {
    name: "fused_bf16_all_options",
    kernel: "ssd_fused.cu",
    entry: "ssd_fused_fwd",
    namespace: "ssd_fused",
    threads: 128,
    p_tile: 64,
    tile: &[],
    defines: &[
        "-DSSD_DTYPE=2",
        "-DSSD_Q=64",
        "-DSSD_N=32",
        "-DSSD_P=64",
        "-DSSD_PT=64",
        "-DSSD_NWARPS=4",
        "-DSSD_YC=64",
        "-DSSD_STAGES=2",
        "-DSSD_DT_BIAS=1",
        "-DSSD_DT_SOFTPLUS=1",
        "-DSSD_D_MODE=1",
        "-DSSD_HAS_Z=1",
        "-DSSD_HAS_S0=1",
        "-DSSD_FINAL=1",
    ],
    chunk_cb: false,
    args: &["4", "2", "1", "3", "1", "0", "64", "65", "200", "300"],
};

/// The fused kernel at Q = 128, one stage with C B^T precomputed by
/// ssd_chunk_cb.cu (the reference workloads' path), two P tiles of 32 columns,
/// with `defines` for its options, on the problem `args`.
fn fused_one_stage_cb(
    name: &'static str,
    defines: &'static [&'static str],
    args: &'static [&'static str],
) -> Config {
    Config {
        name,
        kernel: "ssd_fused.cu",
        entry: "ssd_fused_fwd",
        namespace: "ssd_fused",
        threads: 128,
        p_tile: 32,
        tile: &[
            "-DSSD_Q=128",
            "-DSSD_N=64",
            "-DSSD_P=64",
            "-DSSD_PT=32",
            "-DSSD_NWARPS=4",
            "-DSSD_YC=32",
            "-DSSD_STAGES=1",
            "-DSSD_CB_GLOBAL=1",
            "-DSSD_MIN_BLOCKS=1",
        ],
        defines,
        chunk_cb: true,
        args,
    }
}

/// f16 on the one-stage precomputed-C B^T tile, D per head dimension.
const FUSED_F16_CB_DEFINES: [&str; 8] = [
    "-DSSD_DTYPE=1",
    "-DSSD_DT_BIAS=0",
    "-DSSD_DT_SOFTPLUS=0",
    "-DSSD_D_MODE=2",
    "-DSSD_HAS_Z=1",
    "-DSSD_HAS_S0=0",
    "-DSSD_FINAL=0",
    "-DSSD_UNROLL_STATE=1",
];

#[test]
fn fused_kernel_bf16_two_stages_matches_f64() {
    emulate("fused_kernel_bf16_two_stages_matches_f64", &FUSED_BF16);
}

#[test]
fn fused_kernel_f16_precomputed_cb_matches_f64() {
    emulate(
        "fused_kernel_f16_precomputed_cb_matches_f64",
        &fused_one_stage_cb(
            "fused_f16_chunk_cb",
            &FUSED_F16_CB_DEFINES,
            &["4", "2", "2", "2", "129", "0", "1", "256", "300"],
        ),
    );
}

/// The experiment switches of docs/kernels/mamba2-ssd.md, each away from its
/// default, on the path where they all apply (one stage, C B^T precomputed, z):
/// the code they select must still be correct, not only compile.
#[test]
fn fused_kernel_with_every_switch_flipped_matches_f64() {
    const DEFINES: [&str; 12] = [
        "-DSSD_DTYPE=2",
        "-DSSD_DT_BIAS=1",
        "-DSSD_DT_SOFTPLUS=1",
        "-DSSD_D_MODE=1",
        "-DSSD_HAS_Z=1",
        "-DSSD_HAS_S0=1",
        "-DSSD_FINAL=0",
        // The switches (defaults 1, 0, 1, 1, SSD_FINAL).
        "-DSSD_UNROLL_STATE=0",
        "-DSSD_UNROLL_INTRA=1",
        "-DSSD_EARLY_CB=0",
        "-DSSD_Z_PREFETCH=0",
        "-DSSD_STATE_SPLIT=1",
    ];
    emulate(
        "fused_kernel_with_every_switch_flipped_matches_f64",
        &fused_one_stage_cb(
            "fused_switches_flipped",
            &DEFINES,
            &["4", "2", "3", "2", "1", "130", "257"],
        ),
    );
}

/// The f32 kernel (SIMT), every option on, split sequences.
#[test]
fn simt_kernel_f32_matches_f64() {
    emulate(
        "simt_kernel_f32_matches_f64",
        &Config {
            name: "simt_f32",
            kernel: "ssd_simt.cu",
            entry: "ssd_simt_fwd",
            namespace: "ssd_simt",
            threads: 256,
            p_tile: 32,
            tile: &[],
            defines: &[
                "-DSSD_DTYPE=0",
                "-DSSD_Q=64",
                "-DSSD_N=48",
                "-DSSD_P=64",
                "-DSSD_DT_BIAS=1",
                "-DSSD_DT_SOFTPLUS=1",
                "-DSSD_D_MODE=2",
                "-DSSD_HAS_Z=1",
                "-DSSD_HAS_S0=1",
                "-DSSD_FINAL=1",
            ],
            chunk_cb: false,
            args: &["2", "1", "4", "3", "0", "1", "150", "200"],
        },
    );
}
