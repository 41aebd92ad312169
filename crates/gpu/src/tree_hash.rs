//! The kernel-source hash: one sha256 over every kernel source file under
//! `kernels/`, so that a result can say exactly which kernels produced it.
//!
//! Shared verbatim between `build.rs` (which bakes `KERNELS_HASH` into the crate)
//! and the runtime (which hashes an `SSM_KERNEL_DIR` tree the same way), hence
//! no crate-internal imports here.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// File extensions that count as kernel source (hashed and embedded).
pub const SOURCE_EXTENSIONS: &[&str] = &["cu", "cuh", "h", "hpp", "inc"];

/// True for a path whose extension marks it as kernel source.
pub fn is_kernel_source(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| SOURCE_EXTENSIONS.contains(&e))
}

/// Every regular file under `root`, as (path relative to `root` with `/`
/// separators, absolute path), sorted by relative path so the order does not
/// depend on the file system. A missing `root` yields an empty list.
pub fn list_files(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    if root.is_dir() {
        walk(root, root, &mut out)?;
    }
    out.sort();
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if path.is_file() {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, path));
        }
    }
    Ok(())
}

/// Hex sha256 over (relative path, length, contents) of every kernel source
/// file, in sorted order. Length-prefixing keeps file boundaries unambiguous.
pub fn hash_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut hasher = Sha256::new();
    for (rel, contents) in files {
        hasher.update((rel.len() as u64).to_le_bytes());
        hasher.update(rel.as_bytes());
        hasher.update((contents.len() as u64).to_le_bytes());
        hasher.update(contents);
    }
    hex::encode(hasher.finalize())
}

/// The kernel-source hash of the tree at `root` (only source extensions count).
pub fn hash_tree(root: &Path) -> std::io::Result<String> {
    let mut loaded = Vec::new();
    for (rel, path) in list_files(root)? {
        if is_kernel_source(&path) {
            loaded.push((rel, std::fs::read(&path)?));
        }
    }
    Ok(hash_files(
        loaded.iter().map(|(r, c)| (r.as_str(), c.as_slice())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_sources_only_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("b/k.cu", "kernel");
        write("a/h.cuh", "header");
        write("budgets.toml", "not a source");
        let expected = hash_files([("a/h.cuh", &b"header"[..]), ("b/k.cu", &b"kernel"[..])]);
        assert_eq!(hash_tree(dir.path()).unwrap(), expected);
        write("notes.md", "also not a source");
        assert_eq!(hash_tree(dir.path()).unwrap(), expected);
        write("a/h.cuh", "header edited");
        assert_ne!(hash_tree(dir.path()).unwrap(), expected);
    }

    #[test]
    fn a_missing_tree_hashes_like_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert_eq!(hash_tree(&missing).unwrap(), hash_files([]));
    }
}
