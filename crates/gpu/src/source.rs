//! Kernel sources: embedded at build time, or read from disk for hot reload, and
//! flattened into one translation unit for NVRTC.
//!
//! NVRTC cannot see our headers on disk, so `#include "..."` lines are resolved
//! here, textually, against `kernels/`: first relative to the including file,
//! then relative to `kernels/` itself (`#include "common/math.cuh"`). Each
//! inlined file is wrapped in `#line` directives, so NVRTC's diagnostics still
//! name the original file and line. Angle-bracket includes (`<cuda_bf16.h>`) are
//! left to NVRTC and the CUDA toolkit include directory.
//!
//! Every header is inlined at most once per translation unit (as if it said
//! `#pragma once`; the pragma itself is blanked out, since NVRTC would warn about
//! it in what it sees as the main file).

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::PathBuf;

use crate::embedded::EMBEDDED_FILES;
use crate::GpuError;

/// Environment variable naming a `kernels/` directory to read sources from at run
/// time instead of the copies embedded in the binary (hot reload).
pub const KERNEL_DIR_ENV: &str = "SSM_KERNEL_DIR";

/// Deepest include nesting accepted; deeper means a runaway include chain.
const MAX_INCLUDE_DEPTH: usize = 32;

/// A kernel source file under `kernels/`, embedded at build time and optionally
/// re-read from disk (hot reload, see the crate README / `SSM_KERNEL_DIR`).
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// Path relative to `kernels/`, e.g. `"mamba1/decode.cu"`.
    pub path: &'static str,
    /// The text embedded with `include_str!`.
    pub embedded: &'static str,
}

/// The [`KernelSource`] of `kernels/<path>`, from the copies ssm-gpu's build
/// script embedded (see `crates/gpu/build.rs`): the calling crate needs no
/// kernel files of its own, which is what lets it be packaged and used from
/// crates.io. A path that was not embedded fails the build.
#[macro_export]
macro_rules! kernel_source {
    ($path:literal) => {
        $crate::KernelSource {
            path: $path,
            embedded: const {
                match $crate::source::embedded_file($path) {
                    Some(text) => text,
                    None => panic!(concat!(
                        "kernel_source!: kernels/",
                        $path,
                        " is not among the kernel sources ssm-gpu embedded"
                    )),
                }
            },
        }
    };
}

/// The text of `kernels/<path>` as embedded at build time, or `None`; a `const
/// fn` so that [`kernel_source!`] resolves its path at compile time.
pub const fn embedded_file(path: &str) -> Option<&'static str> {
    let mut i = 0;
    while i < crate::embedded::EMBEDDED.len() {
        let (rel, text) = crate::embedded::EMBEDDED[i];
        if const_str_eq(rel, path) {
            return Some(text);
        }
        i += 1;
    }
    None
}

/// `a == b`, which `str`'s `PartialEq` cannot do in a `const fn` yet.
const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Where kernel files are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceRoot {
    /// The copies embedded in this binary at build time.
    Embedded,
    /// A `kernels/` directory on disk (hot reload).
    Disk(PathBuf),
}

impl SourceRoot {
    /// `SSM_KERNEL_DIR` when set and non-empty, else the embedded copies.
    pub fn from_env() -> Self {
        match std::env::var_os(KERNEL_DIR_ENV) {
            Some(dir) if !dir.is_empty() => SourceRoot::Disk(PathBuf::from(dir)),
            _ => SourceRoot::Embedded,
        }
    }

    /// Human-readable description, for reports.
    pub fn describe(&self) -> String {
        match self {
            SourceRoot::Embedded => "embedded at build time".to_string(),
            SourceRoot::Disk(dir) => format!("read from {}", dir.display()),
        }
    }

    /// The kernel-source hash of this root (see `tree_hash`): the build-time
    /// `KERNELS_HASH` when embedded, a fresh hash of the directory when on disk.
    pub fn kernels_hash(&self) -> Result<String, GpuError> {
        match self {
            SourceRoot::Embedded => Ok(crate::KERNELS_HASH.to_string()),
            SourceRoot::Disk(dir) => {
                crate::tree_hash::hash_tree(dir).map_err(|source| GpuError::Io {
                    what: "hashing kernel sources under",
                    path: dir.clone(),
                    source,
                })
            }
        }
    }

    /// The text of `kernels/<rel>`, or `None` when this root has no such file.
    pub fn read(&self, rel: &str) -> Result<Option<Cow<'static, str>>, GpuError> {
        match self {
            SourceRoot::Embedded => Ok(EMBEDDED_FILES
                .iter()
                .find(|(path, _)| *path == rel)
                .map(|(_, text)| Cow::Borrowed(*text))),
            SourceRoot::Disk(dir) => {
                let path = dir.join(rel);
                match std::fs::read_to_string(&path) {
                    Ok(text) => Ok(Some(Cow::Owned(text))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(GpuError::Io {
                        what: "reading kernel source",
                        path,
                        source,
                    }),
                }
            }
        }
    }

    /// The main text of `src`: its embedded copy, or the file on disk.
    fn main_text(&self, src: &KernelSource) -> Result<Cow<'static, str>, GpuError> {
        match self {
            SourceRoot::Embedded => Ok(Cow::Borrowed(src.embedded)),
            SourceRoot::Disk(dir) => self.read(src.path)?.ok_or_else(|| {
                GpuError::MissingSource(format!("{} under {}", src.path, dir.display()))
            }),
        }
    }
}

/// One translation unit ready for NVRTC: the main file with every quoted
/// include inlined between `#line` directives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedSource {
    /// The main file's path relative to `kernels/` (NVRTC's program name).
    pub main: String,
    /// The flattened text handed to NVRTC.
    pub text: String,
    /// Every file pulled in, main file first, in inclusion order.
    pub files: Vec<String>,
}

/// Flatten `src` and its quoted includes, read from `root`.
pub fn resolve(src: &KernelSource, root: &SourceRoot) -> Result<ResolvedSource, GpuError> {
    let main_text = root.main_text(src)?;
    let main = normalize(src.path).unwrap_or_else(|| src.path.to_string());
    let mut resolver = Resolver {
        root,
        text: String::with_capacity(main_text.len() * 2),
        files: vec![main.clone()],
        seen: HashSet::from([main.clone()]),
    };
    resolver.expand(&main, &main_text, 0)?;
    Ok(ResolvedSource {
        main,
        text: resolver.text,
        files: resolver.files,
    })
}

struct Resolver<'r> {
    root: &'r SourceRoot,
    text: String,
    files: Vec<String>,
    seen: HashSet<String>,
}

impl Resolver<'_> {
    fn expand(&mut self, path: &str, body: &str, depth: usize) -> Result<(), GpuError> {
        self.push_line_marker(1, path);
        for (index, line) in body.lines().enumerate() {
            let line_no = index + 1;
            if is_pragma_once(line) {
                // Keep the line count intact; the once-semantics are ours.
                self.text.push('\n');
                continue;
            }
            let Some(include) = quoted_include(line) else {
                self.text.push_str(line);
                self.text.push('\n');
                continue;
            };
            let (target, target_text) = self.find_include(path, line_no, include)?;
            if self.seen.insert(target.clone()) {
                if depth + 1 > MAX_INCLUDE_DEPTH {
                    return Err(GpuError::Compile {
                        file: path.to_string(),
                        log: format!(
                            "{path}({line_no}): includes nest deeper than {MAX_INCLUDE_DEPTH}"
                        ),
                    });
                }
                self.files.push(target.clone());
                self.expand(&target, &target_text, depth + 1)?;
                self.push_line_marker(line_no + 1, path);
            } else {
                self.text.push_str("// (already included) ");
                self.text.push_str(line.trim());
                self.text.push('\n');
            }
        }
        Ok(())
    }

    fn push_line_marker(&mut self, line: usize, path: &str) {
        self.text.push_str(&format!("#line {line} \"{path}\"\n"));
    }

    /// Resolve `include` seen in `from`: relative to `from`'s folder first, then
    /// relative to `kernels/`.
    fn find_include(
        &self,
        from: &str,
        line: usize,
        include: &str,
    ) -> Result<(String, Cow<'static, str>), GpuError> {
        let folder = from.rsplit_once('/').map_or("", |(dir, _)| dir);
        let mut candidates = Vec::with_capacity(2);
        if !folder.is_empty() {
            candidates.extend(normalize(&format!("{folder}/{include}")));
        }
        candidates.extend(normalize(include));
        candidates.dedup();
        for candidate in &candidates {
            if let Some(text) = self.root.read(candidate)? {
                return Ok((candidate.clone(), text));
            }
        }
        Err(GpuError::MissingInclude {
            from: from.to_string(),
            line,
            include: include.to_string(),
            tried: format!(
                "tried {} in {}",
                if candidates.is_empty() {
                    "nothing (the path leaves kernels/)".to_string()
                } else {
                    candidates.join(", ")
                },
                self.root.describe()
            ),
        })
    }
}

/// The target of `#include "target"`, if `line` is one (whitespace allowed
/// around `#` and `include`).
fn quoted_include(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("include")?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let (target, _) = rest.split_once('"')?;
    Some(target)
}

fn is_pragma_once(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix('#') else {
        return false;
    };
    let mut words = rest.split_whitespace();
    words.next() == Some("pragma") && words.next() == Some("once") && words.next().is_none()
}

/// `a/./b/../c.cuh` -> `a/c.cuh`; `None` when the path climbs out of `kernels/`
/// or is absolute.
fn normalize(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn disk_tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            write(dir.path(), rel, text);
        }
        dir
    }

    const MAIN: KernelSource = KernelSource {
        path: "fam/k.cu",
        embedded: "this embedded text is ignored when reading from disk",
    };

    #[test]
    fn recognizes_quoted_includes_only() {
        assert_eq!(quoted_include("#include \"a/b.cuh\""), Some("a/b.cuh"));
        assert_eq!(
            quoted_include("  #  include   \"x.cuh\" // c"),
            Some("x.cuh")
        );
        assert_eq!(quoted_include("#include <cuda_bf16.h>"), None);
        assert_eq!(quoted_include("// #include \"x.cuh\""), None);
        assert_eq!(quoted_include("#includes \"x\""), None);
        assert!(is_pragma_once("  #pragma once"));
        assert!(!is_pragma_once("#pragma unroll"));
    }

    #[test]
    fn normalizes_relative_paths() {
        assert_eq!(normalize("a/./b/../c.cuh").as_deref(), Some("a/c.cuh"));
        assert_eq!(normalize("../x.cuh"), None);
        assert_eq!(normalize("/abs.cuh"), None);
    }

    #[test]
    fn inlines_headers_with_line_markers() {
        let dir = disk_tree(&[
            ("fam/k.cu", "#include \"common/a.cuh\"\nint main_line2;\n"),
            ("common/a.cuh", "#pragma once\nint a_line2;\n"),
        ]);
        let resolved = resolve(&MAIN, &SourceRoot::Disk(dir.path().into())).unwrap();
        assert_eq!(resolved.files, ["fam/k.cu", "common/a.cuh"]);
        assert_eq!(
            resolved.text,
            "#line 1 \"fam/k.cu\"\n\
             #line 1 \"common/a.cuh\"\n\
             \n\
             int a_line2;\n\
             #line 2 \"fam/k.cu\"\n\
             int main_line2;\n"
        );
    }

    #[test]
    fn prefers_the_including_files_folder_then_the_root() {
        let dir = disk_tree(&[
            (
                "fam/k.cu",
                "#include \"local.cuh\"\n#include \"common/shared.cuh\"\n",
            ),
            ("fam/local.cuh", "int local;\n"),
            ("local.cuh", "int wrong_one;\n"),
            ("common/shared.cuh", "#include \"detail.cuh\"\n"),
            ("common/detail.cuh", "int detail;\n"),
        ]);
        let resolved = resolve(&MAIN, &SourceRoot::Disk(dir.path().into())).unwrap();
        assert_eq!(
            resolved.files,
            [
                "fam/k.cu",
                "fam/local.cuh",
                "common/shared.cuh",
                "common/detail.cuh"
            ]
        );
        assert!(!resolved.text.contains("wrong_one"));
    }

    #[test]
    fn includes_each_header_once_and_survives_cycles() {
        let dir = disk_tree(&[
            ("fam/k.cu", "#include \"a.cuh\"\n#include \"a.cuh\"\n"),
            ("fam/a.cuh", "#include \"b.cuh\"\nint a;\n"),
            ("fam/b.cuh", "#include \"a.cuh\"\nint b;\n"),
        ]);
        let resolved = resolve(&MAIN, &SourceRoot::Disk(dir.path().into())).unwrap();
        assert_eq!(resolved.text.matches("int a;").count(), 1);
        assert_eq!(resolved.text.matches("int b;").count(), 1);
        assert!(resolved
            .text
            .contains("// (already included) #include \"a.cuh\""));
    }

    #[test]
    fn missing_include_names_file_line_and_candidates() {
        let dir = disk_tree(&[("fam/k.cu", "\n\n#include \"nope.cuh\"\n")]);
        let err = resolve(&MAIN, &SourceRoot::Disk(dir.path().into())).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, GpuError::MissingInclude { line: 3, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("fam/k.cu:3") && msg.contains("fam/nope.cuh"),
            "{msg}"
        );
    }

    #[test]
    fn missing_main_file_on_disk_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(&MAIN, &SourceRoot::Disk(dir.path().into())).unwrap_err();
        assert!(matches!(err, GpuError::MissingSource(_)), "{err}");
    }

    /// The real kernels: each resolves its includes of `kernels/common/` from the
    /// copies embedded at build time and from the tree on disk (hot reload) alike,
    /// and every file it pulls in is embedded.
    #[test]
    fn real_kernels_resolve_the_shared_headers_embedded_and_on_disk() {
        let disk = SourceRoot::Disk(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels"));
        for path in [
            "mamba1/decode.cu",
            "mamba1/scan_fwd.cu",
            "mamba2/decode.cu",
            "mamba2/ssd_fused.cu",
            "mamba2/ssd_simt.cu",
            "mamba2/ssd_chunk_cb.cu",
        ] {
            let (_, text) = EMBEDDED_FILES
                .iter()
                .find(|(p, _)| *p == path)
                .unwrap_or_else(|| panic!("{path} is not embedded"));
            let src = KernelSource {
                path,
                embedded: text,
            };
            let embedded = resolve(&src, &SourceRoot::Embedded).unwrap();
            let on_disk = resolve(&src, &disk).unwrap();
            assert!(
                embedded.files.iter().any(|f| f == "common/math.cuh")
                    && embedded.files.iter().any(|f| f == "common/convert.cuh"),
                "{path} does not include the shared headers: {:?}",
                embedded.files
            );
            assert_eq!(embedded.files, on_disk.files, "{path}");
            for file in &embedded.files {
                assert!(
                    EMBEDDED_FILES.iter().any(|(p, _)| p == file),
                    "{file} (from {path}) is not embedded"
                );
            }
        }
    }

    /// A change to a shared header changes the kernel-source hash that results
    /// are keyed by (the build-time `KERNELS_HASH` is the same function of the
    /// tree, see build.rs).
    #[test]
    fn the_kernels_hash_covers_the_shared_headers() {
        let kernels = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let copy = tempfile::tempdir().unwrap();
        for (rel, abs) in crate::tree_hash::list_files(&kernels).unwrap() {
            write(copy.path(), &rel, &std::fs::read_to_string(abs).unwrap());
        }
        let root = SourceRoot::Disk(copy.path().into());
        let before = root.kernels_hash().unwrap();
        let header = copy.path().join("common/math.cuh");
        let mut text = std::fs::read_to_string(&header).unwrap();
        text.push_str("// one more line\n");
        std::fs::write(&header, text).unwrap();
        assert_ne!(before, root.kernels_hash().unwrap());
    }

    #[test]
    fn embedded_root_uses_the_embedded_main_text() {
        let src = KernelSource {
            path: "test/inline.cu",
            embedded: "extern \"C\" __global__ void k() {}\n",
        };
        let resolved = resolve(&src, &SourceRoot::Embedded).unwrap();
        assert!(resolved
            .text
            .ends_with("extern \"C\" __global__ void k() {}\n"));
    }
}
