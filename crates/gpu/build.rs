//! Embeds every kernel source under `kernels/` (so `#include "common/x.cuh"`
//! resolves without the source tree on disk) and bakes the kernel-source hash
//! into `ssm_gpu::KERNELS_HASH`.
//!
//! The kernels are read from `crates/gpu/kernels`: in the repository a symlink to
//! the shared `kernels/` at the root (which other crates and tools use too), in
//! the packaged crate a real directory, since `cargo package` follows the link
//! and copies the files. `../../kernels` is the fallback for a checkout where
//! the link did not survive (git on Windows without symlink support writes a
//! text file in its place).

use std::fmt::Write as _;
use std::path::PathBuf;

#[path = "src/tree_hash.rs"]
#[allow(dead_code)] // the runtime uses more of it than the build script
mod tree_hash;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let kernels = kernels_dir(&manifest);
    // Cargo scans a directory named here recursively for changed mtimes; named
    // by its canonical path so that the scan does not stop at the symlink.
    println!("cargo:rerun-if-changed={}", kernels.display());
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/tree_hash.rs");

    let files = tree_hash::list_files(&kernels).expect("reading kernels/");
    let mut generated = String::from(
        "/// Every file under `kernels/` that the runtime may need: (path relative to `kernels/`, contents).\n\
         /// A `const` so that `kernel_source!` can look files up at compile time.\n\
         pub const EMBEDDED: &[(&str, &str)] = &[\n",
    );
    let mut hashed = Vec::new();
    for (rel, path) in &files {
        let is_budget = path.extension().is_some_and(|e| e == "toml");
        if !(tree_hash::is_kernel_source(path) || is_budget) {
            continue;
        }
        let abs = path.canonicalize().expect("canonical kernel path");
        writeln!(
            generated,
            "    ({rel:?}, include_str!({:?})),",
            abs.display().to_string()
        )
        .expect("write to String");
        if tree_hash::is_kernel_source(path) {
            hashed.push((
                rel.clone(),
                std::fs::read(path).expect("reading a kernel source"),
            ));
        }
    }
    generated.push_str(
        "];\n\
         /// `EMBEDDED` as a static: one copy in the binary for run-time lookups.\n\
         pub static EMBEDDED_FILES: &[(&str, &str)] = EMBEDDED;\n",
    );
    let hash = tree_hash::hash_files(hashed.iter().map(|(r, c)| (r.as_str(), c.as_slice())));
    writeln!(
        generated,
        "/// Hex sha256 of every kernel source under `kernels/` at build time (see `tree_hash`).\n\
         pub const KERNELS_HASH: &str = {hash:?};"
    )
    .expect("write to String");

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out.join("embedded_kernels.rs"), generated)
        .expect("writing embedded_kernels.rs");
}

/// `kernels/` beside this manifest (the symlink, or the packaged copy), else the
/// repository's `../../kernels`; canonical, so the file paths baked into
/// `include_str!` and the rerun scan see real files. Panics (failing the build
/// with the message) when neither exists.
fn kernels_dir(manifest: &std::path::Path) -> PathBuf {
    let candidates = [manifest.join("kernels"), manifest.join("../../kernels")];
    for dir in &candidates {
        if dir.is_dir() {
            return dir.canonicalize().expect("canonical kernels/ path");
        }
    }
    panic!(
        "ssm-gpu's build script found no kernel sources: looked for {} and {}",
        candidates[0].display(),
        candidates[1].display()
    );
}
