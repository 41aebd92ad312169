//! `ssmk kernels pack` and `ssmk kernels check` run as a user runs them: a small
//! pack (one decode shape, sm_86 SASS and compute_90 PTX) is built with NVRTC,
//! found again with NVRTC switched off, and a shape it lacks is a miss that says
//! what is missing and how to get it. Planning and the usage errors need no NVRTC.

use std::path::PathBuf;
use std::process::{Command, Output};

fn ssmk(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ssmk"));
    command.args(args).env_remove("SSM_KERNEL_PACK");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("running the ssmk binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ssmk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SHAPE: &str = "m2-step:b=1,H=2,P=64,N=16";

#[test]
fn planning_lists_every_target_without_nvrtc() {
    let dir = TempDir::new("plan");
    let o = ssmk(
        &["kernels", "pack", "--out", dir.path(), "--plan-only"],
        &[],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("modules for sm_80, sm_86, sm_89, sm_90, compute_90"),
        "{t}"
    );
    for family in ["ssd", "scan", "scan-bwd", "m1-step", "m2-step", "runtime"] {
        assert!(t.contains(&format!(" {family} ")), "{family} missing:\n{t}");
    }
    assert!(!dir.0.exists(), "--plan-only writes nothing");
}

#[test]
fn usage_errors_exit_2_and_say_why() {
    let dir = TempDir::new("usage");
    let o = ssmk(
        &[
            "kernels",
            "pack",
            "--out",
            dir.path(),
            "--coverage",
            "shapes",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("needs at least one --shape"));
    let o = ssmk(&["kernels", "check"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--pack DIR or set SSM_KERNEL_PACK"));
    let o = ssmk(
        &["kernels", "pack", "--out", dir.path(), "--shape", "ssd:b=1"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--shape ssd:b=1"), "{}", text(&o));
    // A set SSM_KERNEL_PACK that is no pack is an error, not a fallback.
    let o = ssmk(&["resources"], &[("SSM_KERNEL_PACK", dir.path())]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("kernel pack manifest"), "{}", text(&o));
}

#[test]
fn a_pack_is_built_found_without_nvrtc_and_misses_say_why() {
    if ssm_gpu::test_compiler_or_skip("a_pack_is_built_found_without_nvrtc").is_none() {
        return;
    }
    let dir = TempDir::new("build");
    let archs = "sm_86,compute_90";
    // `ssmk kernels <command>` on the pack directory (given with `dir_flag`),
    // for both targets and the shapes coverage of `shape`.
    let kernels = |command: &str, dir_flag: &str, shape: &str, env: &[(&str, &str)]| {
        let args = [
            "kernels",
            command,
            dir_flag,
            dir.path(),
            "--arch",
            archs,
            "--coverage",
            "shapes",
            "--shape",
            shape,
        ];
        ssmk(&args, env)
    };
    let o = kernels("pack", "--out", SHAPE, &[("SSM_KERNEL_CACHE", "off")]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("use it with SSM_KERNEL_PACK="), "{t}");
    let manifest = std::fs::read_to_string(dir.0.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"compute_90\"") && manifest.contains("\"sm_86\""));
    let files: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f.ends_with(".ptx")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".cubin")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".log")), "{files:?}");

    let check = |shape: &str| kernels("check", "--pack", shape, &[]);
    let o = check(SHAPE);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(0 missing)"), "{}", text(&o));
    let o = check("m2-step:b=1,H=2,P=64,N=32");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for needed in [
        "mamba2/decode.cu",
        "is not in the kernel pack",
        "for sm_86",
        "for compute_90",
        "install NVRTC 13",
        "ssmk kernels pack --arch sm_86",
    ] {
        assert!(t.contains(needed), "`{needed}` missing:\n{t}");
    }
}
