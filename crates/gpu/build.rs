//! Embeds every kernel source under `kernels/` (so `#include "common/x.cuh"`
//! resolves without the source tree on disk) and bakes the kernel-source hash
//! into `ssm_gpu::KERNELS_HASH`.

use std::fmt::Write as _;
use std::path::PathBuf;

#[path = "src/tree_hash.rs"]
#[allow(dead_code)] // the runtime uses more of it than the build script
mod tree_hash;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let kernels = manifest.join("../../kernels");
    // Cargo scans a directory named here recursively for changed mtimes.
    println!("cargo:rerun-if-changed={}", kernels.display());
    println!("cargo:rerun-if-changed=src/tree_hash.rs");

    let files = tree_hash::list_files(&kernels).expect("reading kernels/");
    let mut generated = String::from(
        "/// Every file under `kernels/` that the runtime may need: (path relative to `kernels/`, contents).\n\
         pub static EMBEDDED_FILES: &[(&str, &str)] = &[\n",
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
    generated.push_str("];\n");
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
