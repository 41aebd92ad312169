//! The scan backward kernels (`kernels/mamba1/scan_bwd.cu`) run on the CPU
//! under the warp emulation (`kernels/mamba2/ssd_emu.cuh`: one fiber per CUDA
//! thread, real `__syncthreads`) and are judged against an f64 adjoint that
//! stores every state, by `kernels/mamba1/scan_bwd_emu_check.cu`. The tiling
//! (lanes, states per lane, tile, threads) and the shared-memory size come from
//! the host's [`BwdConfig`], so the host's layout mirror is checked by the
//! kernel's compile-time assertion in the same run. This is what checks the
//! kernels' index arithmetic, masking and reduction order without a GPU.
//!
//! Each case also runs the training forward (`kernels/mamba1/scan_fwd.cu` with
//! the checkpoints of [`ScanConfig::with_checkpoints`], as a second
//! translation unit): its checkpoints must be the checkpoint kernel's bit for
//! bit, its output the f64 forward's, and the sweep is fed with them.
//!
//! Needs a host C++20 compiler (`$CXX`, else `g++`); without one the tests skip
//! loudly unless `SSM_REQUIRE_CXX=1` (set by `.ci/run`).

use std::path::PathBuf;
use std::process::Command;

use mamba1_scan::cuda::{BwdConfig, BwdOptions, ScanConfig, ScanProblem, ScanTuning};
use ssm_core::mamba1::Mamba1Dims;
use ssm_core::DType;
use ssm_gpu::DeviceLimits;

fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../kernels")
        .canonicalize()
        .expect("kernels/")
}

struct Emulated {
    name: &'static str,
    d_state: usize,
    /// `None`: constant B (or C); `Some(G)`: grouped.
    b_groups: Option<usize>,
    c_groups: Option<usize>,
    all_options: bool,
    /// `b D_in L seed [varlen lengths]` (G_B, G_C are inserted from the groups).
    batch: usize,
    d_inner: usize,
    seqlen: usize,
    varlen: &'static [usize],
    /// The backward's variant (`BwdOptions::default()` for most).
    options: BwdOptions,
}

fn run(cxx: &str, e: &Emulated) {
    let problem = ScanProblem {
        dtype: DType::F32,
        dims: Mamba1Dims {
            batch: e.batch,
            d_inner: e.d_inner,
            d_state: e.d_state,
            seqlen: e.seqlen,
        },
        b_groups: e.b_groups,
        c_groups: e.c_groups,
        has_d: e.all_options,
        has_z: e.all_options,
        has_delta_bias: e.all_options,
        delta_softplus: e.all_options,
        has_initial_states: true,
        return_final_states: true,
        varlen_seqs: (!e.varlen.is_empty()).then_some(e.varlen.len()),
    };
    let config = BwdConfig::with_options(&problem, &DeviceLimits::H100_SXM, e.options)
        .expect("configuration");
    assert_eq!(
        config.lean,
        e.options.six_blocks,
        "{}: {}",
        e.name,
        config.label()
    );
    let k = kernels_dir();
    let dir = std::env::temp_dir().join(format!("ssm-emu-bwd-{}-{}", e.name, std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("check");
    let fwd_obj = dir.join("fwd.o");
    // The training forward, scalar loads (the emulation has no vector path).
    let fwd_config = ScanConfig {
        vec_io: false,
        ..ScanConfig::new(&problem, ScanTuning::default(), &DeviceLimits::H100_SXM)
            .and_then(|c| c.with_checkpoints(&problem, config.tile))
            .expect("training forward configuration")
    };
    let compile =
        |defines: Vec<(&'static str, String)>, extra: &[&str], out: &PathBuf, obj: bool| {
            let mut cmd = Command::new(cxx);
            cmd.args(["-std=c++20", "-O1", "-w", "-x", "c++"])
                .arg(format!("-I{}", k.display()))
                .arg("-include")
                .arg(k.join("mamba2/ssd_emu.cuh"))
                .arg(k.join("mamba1/scan_bwd_emu_check.cu"))
                .args(extra);
            if obj {
                cmd.arg("-c");
            } else {
                cmd.arg("-x").arg("none").arg(&fwd_obj);
            }
            cmd.arg("-o").arg(out);
            for (key, value) in defines {
                cmd.arg(format!("-D{key}={value}"));
            }
            let built = cmd.output().expect("running the host compiler");
            assert!(
                built.status.success(),
                "{}: compile failed:\n{}",
                e.name,
                String::from_utf8_lossy(&built.stderr)
            );
        };
    compile(fwd_config.defines(), &["-DSCAN_EMU_FWD_TU"], &fwd_obj, true);
    compile(config.defines(), &["-DSCAN_EMU_WITH_FWD"], &exe, false);
    let mut args = vec![
        e.batch.to_string(),
        e.d_inner.to_string(),
        e.seqlen.to_string(),
        e.b_groups.unwrap_or(0).to_string(),
        e.c_groups.unwrap_or(0).to_string(),
        "17".into(),
    ];
    args.extend(e.varlen.iter().map(|l| l.to_string()));
    let out = Command::new(&exe)
        .args(&args)
        .output()
        .expect("running the check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "{} ({}, forward {}):\n{stdout}",
        e.name,
        config.label(),
        fwd_config.label()
    );
    assert!(
        out.status.success(),
        "{} ({}): {stdout}{}",
        e.name,
        config.label(),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

macro_rules! emulated {
    ($test:ident, $e:expr) => {
        #[test]
        fn $test() {
            let Some(cxx) = ssm_gpu::test_cxx_or_skip(stringify!($test)) else {
                return;
            };
            run(&cxx, &$e);
        }
    };
}

/// N 16, B in two groups, C in one, every option, several channel blocks: the
/// case both backward variants run first.
fn n16_grouped_every_option(name: &'static str, options: BwdOptions) -> Emulated {
    Emulated {
        name,
        d_state: 16,
        b_groups: Some(2),
        c_groups: Some(1),
        all_options: true,
        batch: 2,
        d_inner: 40,
        seqlen: 45,
        varlen: &[],
        options,
    }
}

emulated!(
    n16_grouped_every_option_several_blocks,
    n16_grouped_every_option("n16", BwdOptions::default())
);

emulated!(
    n5_mixed_constant_b_bare,
    Emulated {
        name: "n5",
        d_state: 5,
        b_groups: None,
        c_groups: Some(3),
        all_options: false,
        batch: 2,
        d_inner: 36,
        seqlen: 33,
        varlen: &[],
        options: BwdOptions::default(),
    }
);

emulated!(
    n16_varlen_with_empty_and_one_step_sequences,
    Emulated {
        name: "varlen",
        d_state: 16,
        b_groups: Some(3),
        c_groups: None,
        all_options: true,
        batch: 1,
        d_inner: 24,
        seqlen: 70,
        varlen: &[16, 1, 0, 30, 23],
        options: BwdOptions::default(),
    }
);

emulated!(
    n256_largest_state,
    Emulated {
        name: "n256",
        d_state: 256,
        b_groups: Some(1),
        c_groups: Some(1),
        all_options: true,
        batch: 1,
        d_inner: 6,
        seqlen: 9,
        varlen: &[],
        options: BwdOptions::default(),
    }
);

emulated!(
    n1_single_state_one_step,
    Emulated {
        name: "n1",
        d_state: 1,
        b_groups: Some(1),
        c_groups: None,
        all_options: true,
        batch: 3,
        d_inner: 5,
        seqlen: 1,
        varlen: &[],
        options: BwdOptions::default(),
    }
);

emulated!(
    n3_both_constant_every_option,
    Emulated {
        name: "n3",
        d_state: 3,
        b_groups: None,
        c_groups: None,
        all_options: true,
        batch: 2,
        d_inner: 7,
        seqlen: 19,
        varlen: &[],
        options: BwdOptions::default(),
    }
);

emulated!(
    n96_three_states_per_lane_tile_of_ten,
    Emulated {
        name: "n96",
        d_state: 96,
        b_groups: Some(1),
        c_groups: Some(2),
        all_options: false,
        batch: 1,
        d_inner: 6,
        seqlen: 23,
        varlen: &[],
        options: BwdOptions::default(),
    }
);

emulated!(
    n128_constant_b_wide_checkpoint_lanes,
    Emulated {
        name: "n128",
        d_state: 128,
        b_groups: None,
        c_groups: Some(1),
        all_options: true,
        batch: 1,
        d_inner: 5,
        seqlen: 13,
        varlen: &[],
        options: BwdOptions::default(),
    }
);

/// The lanes sweep (v3b), which the slice-major one (v5) replaced at N <= 32.
const LANES: BwdOptions = BwdOptions {
    forward_checkpoints: false,
    six_blocks: false,
    lanes_sweep: true,
    keep_decays: None,
};

/// The lean 6-blocks-per-SM lanes sweep (`BwdOptions::six_blocks`).
const SIX: BwdOptions = BwdOptions {
    six_blocks: true,
    ..LANES
};

/// The slice-major sweep with its decays recomputed (the emulated grids are
/// small, so the default keeps them).
const RECOMPUTE: BwdOptions = BwdOptions {
    forward_checkpoints: false,
    six_blocks: false,
    lanes_sweep: false,
    keep_decays: Some(false),
};

emulated!(
    lanes_n16_grouped_every_option_several_blocks,
    n16_grouped_every_option("lanes-n16", LANES)
);

emulated!(
    slices_recomputed_n16_grouped_every_option_several_blocks,
    n16_grouped_every_option("sm-recompute-n16", RECOMPUTE)
);

emulated!(
    slices_recomputed_varlen_constant_b_every_option,
    Emulated {
        name: "sm-recompute-varlen",
        d_state: 16,
        b_groups: None,
        c_groups: Some(2),
        all_options: true,
        batch: 1,
        d_inner: 40,
        seqlen: 61,
        varlen: &[9, 0, 1, 33, 18],
        options: RECOMPUTE,
    }
);

// Four slices (N 17 to 32): 6 states each at N = 24, 8 at N = 32 (16 sums
// per butterfly); two slices of 5 at N = 9.
emulated!(
    slices_four_of_six_states_n24_every_option,
    Emulated {
        name: "sm-n24",
        d_state: 24,
        b_groups: Some(2),
        c_groups: Some(1),
        all_options: true,
        batch: 2,
        d_inner: 36,
        seqlen: 27,
        varlen: &[],
        options: BwdOptions::default(),
    }
);

emulated!(
    slices_four_of_eight_states_n32_bare,
    Emulated {
        name: "sm-n32",
        d_state: 32,
        b_groups: Some(1),
        c_groups: Some(1),
        all_options: false,
        batch: 1,
        d_inner: 33,
        seqlen: 19,
        varlen: &[],
        options: BwdOptions::default(),
    }
);

emulated!(
    slices_two_of_five_states_n9_every_option,
    Emulated {
        name: "sm-n9",
        d_state: 9,
        b_groups: Some(3),
        c_groups: None,
        all_options: true,
        batch: 2,
        d_inner: 30,
        seqlen: 22,
        varlen: &[],
        options: BwdOptions::default(),
    }
);

emulated!(
    lean_n16_grouped_every_option_several_blocks,
    n16_grouped_every_option("lean-n16", SIX)
);

emulated!(
    lean_varlen_constant_c_bare,
    Emulated {
        name: "lean-varlen",
        d_state: 16,
        b_groups: Some(3),
        c_groups: None,
        all_options: false,
        batch: 1,
        d_inner: 24,
        seqlen: 70,
        varlen: &[16, 1, 0, 30, 23],
        options: SIX,
    }
);
