//! On-disk cache of compiled modules.
//!
//! The key is a sha256 over everything that decides the cubin: the flattened
//! source (so a header edit invalidates), every NVRTC option (arch, defines,
//! include directory, extra flags) and the NVRTC version. Entries are written to
//! a temporary name and renamed, so concurrent processes never read half a file.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::nvrtc::CompiledModule;
use crate::GpuError;

/// Cache directory; `off` (or `0`, `none`) disables caching.
pub const CACHE_ENV: &str = "SSM_KERNEL_CACHE";

/// Bumped when the layout of cache entries changes.
const FORMAT: &str = "ssm-gpu-module-cache-v1";

/// The cache key of one compile: hex sha256.
pub fn cache_key(source_text: &str, options: &[String], nvrtc_version: (i32, i32)) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(FORMAT.as_bytes());
    field(format!("nvrtc {}.{}", nvrtc_version.0, nvrtc_version.1).as_bytes());
    for option in options {
        field(option.as_bytes());
    }
    field(source_text.as_bytes());
    hex::encode(hasher.finalize())
}

/// A directory of `<key>.cubin` + `<key>.log` pairs, or nothing (disabled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleCache {
    dir: Option<PathBuf>,
}

impl ModuleCache {
    /// A cache that stores nothing and finds nothing (`SSM_KERNEL_CACHE=off`).
    pub fn disabled() -> Self {
        ModuleCache { dir: None }
    }

    /// A cache in directory `dir` (created on first store).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        ModuleCache {
            dir: Some(dir.into()),
        }
    }

    /// `SSM_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ssm-kernels`, else
    /// `$HOME/.cache/ssm-kernels`, else `<tmp>/ssm-kernels`.
    pub fn from_env() -> Self {
        match std::env::var_os(CACHE_ENV) {
            Some(value) if ["off", "0", "none"].contains(&value.to_string_lossy().as_ref()) => {
                Self::disabled()
            }
            Some(value) if !value.is_empty() => Self::at(value),
            _ => Self::at(default_dir()),
        }
    }

    /// The cache directory, `None` when disabled.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The cached module for `key`, if a complete entry exists.
    pub fn load(&self, key: &str) -> Option<CompiledModule> {
        let dir = self.dir.as_ref()?;
        let cubin = std::fs::read(dir.join(format!("{key}.cubin"))).ok()?;
        let log = std::fs::read_to_string(dir.join(format!("{key}.log"))).ok()?;
        (!cubin.is_empty()).then_some(CompiledModule { cubin, log })
    }

    /// Store `module` under `key`. The log goes first and the cubin last, so a
    /// reader that sees the cubin also sees the log.
    pub fn store(&self, key: &str, module: &CompiledModule) -> Result<(), GpuError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir).map_err(|source| GpuError::Io {
            what: "creating kernel cache directory",
            path: dir.clone(),
            source,
        })?;
        write_atomically(
            &dir.join(format!("{key}.log")),
            module.log.as_bytes(),
            CACHE_ENTRY,
        )?;
        write_atomically(
            &dir.join(format!("{key}.cubin")),
            &module.cubin,
            CACHE_ENTRY,
        )
    }
}

fn default_dir() -> PathBuf {
    let env_dir = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(xdg) = env_dir("XDG_CACHE_HOME") {
        xdg.join("ssm-kernels")
    } else if let Some(home) = env_dir("HOME") {
        home.join(".cache").join("ssm-kernels")
    } else {
        std::env::temp_dir().join("ssm-kernels")
    }
}

/// Write `bytes` to `path` under a temporary name and rename, so no reader
/// (another process sharing the cache or the pack) sees half a file. Errors
/// say `writing` or `renaming` as what was being done.
pub(crate) fn write_atomically(
    path: &Path,
    bytes: &[u8],
    (writing, renaming): (&'static str, &'static str),
) -> Result<(), GpuError> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let io_error = |what, source| GpuError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&temporary, bytes).map_err(|e| io_error(writing, e))?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        io_error(renaming, e)
    })
}

/// What [`write_atomically`] says of a kernel cache entry.
const CACHE_ENTRY: (&str, &str) = ("writing kernel cache entry", "renaming kernel cache entry");

#[cfg(test)]
mod tests {
    use super::*;

    fn options(extra: &str) -> Vec<String> {
        vec!["-arch=sm_90".into(), extra.into()]
    }

    #[test]
    fn key_changes_with_every_input() {
        let base = cache_key("src", &options("-DN=16"), (13, 0));
        assert_eq!(base, cache_key("src", &options("-DN=16"), (13, 0)));
        assert_eq!(base.len(), 64);
        assert_ne!(base, cache_key("src ", &options("-DN=16"), (13, 0)));
        assert_ne!(base, cache_key("src", &options("-DN=32"), (13, 0)));
        assert_ne!(base, cache_key("src", &options("-DN=16"), (13, 1)));
        let sm80 = vec!["-arch=sm_80".to_string(), "-DN=16".into()];
        assert_ne!(base, cache_key("src", &sm80, (13, 0)));
    }

    #[test]
    fn key_keeps_field_boundaries() {
        // Without length prefixes these two would hash the same bytes.
        let a = cache_key("c", &["ab".into()], (13, 0));
        let b = cache_key("bc", &["a".into()], (13, 0));
        assert_ne!(a, b);
    }

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::at(dir.path().join("nested"));
        let module = CompiledModule {
            cubin: vec![0x7f, b'E', b'L', b'F'],
            log: "ptxas info : Used 8 registers".into(),
        };
        assert_eq!(cache.load("k"), None);
        cache.store("k", &module).unwrap();
        assert_eq!(cache.load("k"), Some(module));
        assert_eq!(cache.load("other"), None);
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let cache = ModuleCache::disabled();
        let module = CompiledModule {
            cubin: vec![1],
            log: String::new(),
        };
        cache.store("k", &module).unwrap();
        assert_eq!(cache.load("k"), None);
    }

    #[test]
    fn an_entry_without_its_log_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.cubin"), [1u8, 2]).unwrap();
        assert_eq!(ModuleCache::at(dir.path()).load("k"), None);
    }
}
