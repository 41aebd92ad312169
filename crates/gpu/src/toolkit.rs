//! Finding the CUDA pieces this process needs at run time: the driver
//! (`libcuda.so.1`), NVRTC (`libnvrtc.so.13` and its builtins) and the toolkit
//! headers that NVRTC 13 no longer bundles (`cuda_bf16.h`, `cuda_fp16.h`).
//!
//! cudarc loads its libraries lazily and panics when one is missing, so every
//! entry point of this crate asks here first and turns absence into a typed
//! [`GpuError`]. The probes dlopen the names themselves instead of calling
//! cudarc's `is_culib_present`, which exists only under cudarc's
//! `dynamic-loading`: when another crate of the graph (candle-core with `cuda`)
//! selects `dynamic-linking`, the libraries are linked in and the probes find
//! them already loaded. The names probed are a subset of cudarc's candidates
//! (for CUDA 13), so "found here" implies "cudarc finds it".
//!
//! NVRTC is looked up on the dynamic loader's path first. Failing that, it is
//! loaded by full path from a known install (`SSM_NVRTC_LIB_DIR`, the pip wheel in
//! `.venv-cuda/` that `.ci/install-cuda.sh` creates, `CUDA_HOME`, `/usr/local/cuda`)
//! with `RTLD_GLOBAL`: later `dlopen("libnvrtc.so.13")` calls, cudarc's and
//! NVRTC's own for `libnvrtc-builtins.so.13.0`, then match the loaded object by
//! its soname, so no `LD_LIBRARY_PATH` is needed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::GpuError;

/// A directory holding the CUDA toolkit headers; overrides every other place.
pub const CUDA_INCLUDE_ENV: &str = "SSM_CUDA_INCLUDE";
/// A directory holding `libnvrtc.so.13`; searched before the defaults.
pub const NVRTC_LIB_DIR_ENV: &str = "SSM_NVRTC_LIB_DIR";

const NVRTC_SONAME: &str = "libnvrtc.so.13";
/// A header NVRTC 13 needs from the toolkit for bf16 kernels: its presence marks
/// a usable include directory.
const MARKER_HEADER: &str = "cuda_bf16.h";

/// The NVRTC library this process compiles with.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NvrtcInfo {
    /// `(major, minor)` as reported by `nvrtcVersion`.
    pub version: (i32, i32),
    /// Where it was loaded from.
    pub location: String,
    /// The directory it was loaded from, when we loaded it by path.
    #[serde(skip)]
    pub lib_dir: Option<PathBuf>,
}

impl NvrtcInfo {
    /// `major.minor`, e.g. `13.0`.
    pub fn version_string(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }
}

/// The toolkit include directory NVRTC is pointed at, and why that one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IncludeDir {
    /// The directory holding `cuda_bf16.h` and the other headers.
    pub path: PathBuf,
    /// Which rule found it (`SSM_CUDA_INCLUDE`, `CUDA_HOME`, `.venv-cuda`, ...).
    pub origin: String,
}

/// True when the CUDA driver library can be loaded (a GPU may still be absent).
pub fn driver_present() -> bool {
    library_loadable(&driver_names())
}

/// The driver's names that cudarc tries too, whatever CUDA version it was
/// built for: `libcuda.so`, `libcuda.so.1` (and `nvcuda.dll` on Windows).
fn driver_names() -> Vec<String> {
    let mut names = lib_names("cuda", &["1"]);
    if cfg!(windows) {
        names.extend(lib_names("nvcuda", &[]));
    }
    names
}

/// NVRTC's names that cudarc built for CUDA 13 tries: `libnvrtc.so` and
/// `libnvrtc.so.13`.
fn nvrtc_names() -> Vec<String> {
    lib_names("nvrtc", &["13"])
}

/// `{prefix}{name}{suffix}`, then with each `.{version}` appended (unix sonames).
fn lib_names(name: &str, versions: &[&str]) -> Vec<String> {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let plain = format!("{DLL_PREFIX}{name}{DLL_SUFFIX}");
    let mut names = vec![plain.clone()];
    if cfg!(unix) {
        names.extend(versions.iter().map(|v| format!("{plain}.{v}")));
    }
    names
}

/// True when one of `names` can be opened by the dynamic loader (or is already
/// loaded, by soname); the handle is closed again.
fn library_loadable(names: &[String]) -> bool {
    names.iter().any(|name| {
        // SAFETY: only opens NVIDIA's libraries, whose initializers have no
        // preconditions, and closes them again when the handle drops.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// Make NVRTC loadable (see the module docs) and report its version; cached for
/// the life of the process.
pub fn nvrtc() -> Result<&'static NvrtcInfo, GpuError> {
    static NVRTC: OnceLock<Result<NvrtcInfo, String>> = OnceLock::new();
    NVRTC
        .get_or_init(load_nvrtc)
        .as_ref()
        .map_err(|why| GpuError::NoNvrtc(why.clone()))
}

fn load_nvrtc() -> Result<NvrtcInfo, String> {
    let on_loader_path = library_loadable(&nvrtc_names());
    let (location, lib_dir) = if on_loader_path {
        ("the dynamic loader's search path".to_string(), None)
    } else {
        let candidates = nvrtc_lib_dir_candidates();
        let dir = candidates
            .iter()
            .find(|dir| dir.join(NVRTC_SONAME).is_file())
            .ok_or_else(|| {
                format!(
                    "not on the dynamic loader's path and not in any of: {} \
                     (run .ci/install-cuda.sh, or set LD_LIBRARY_PATH or {NVRTC_LIB_DIR_ENV})",
                    join_paths(&candidates)
                )
            })?;
        preload_nvrtc(dir)?;
        // Now finds the library we just loaded, by its soname.
        if !library_loadable(&[NVRTC_SONAME.to_string()]) {
            return Err(format!(
                "loaded {} but cudarc still cannot open it",
                dir.join(NVRTC_SONAME).display()
            ));
        }
        (
            dir.join(NVRTC_SONAME).display().to_string(),
            Some(dir.clone()),
        )
    };
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loadable (checked above); the out-pointers are valid.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {status:?}"));
    }
    Ok(NvrtcInfo {
        version: (major, minor),
        location,
        lib_dir,
    })
}

/// Load the builtins library and NVRTC itself from `dir`, globally and for good.
#[cfg(unix)]
fn preload_nvrtc(dir: &Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // The `.alt` variant is an alternative build; the plain one is what NVRTC asks for.
    let mut libraries = entries_named(dir, "libnvrtc-builtins.so.13")
        .map_err(|e| format!("listing {}: {e}", dir.display()))?;
    libraries.push(dir.join(NVRTC_SONAME));
    for path in libraries {
        // SAFETY: these are NVIDIA's libraries; their initializers have no preconditions.
        let library = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) }
            .map_err(|e| format!("loading {}: {e}", path.display()))?;
        // Stays loaded for the whole process: cudarc and NVRTC find it by soname.
        std::mem::forget(library);
    }
    Ok(())
}

#[cfg(not(unix))]
fn preload_nvrtc(dir: &Path) -> Result<(), String> {
    Err(format!(
        "loading NVRTC from {} by path is only supported on unix; put it on PATH",
        dir.display()
    ))
}

/// Directories that may hold `libnvrtc.so.13`, in search order.
fn nvrtc_lib_dir_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = env_path(NVRTC_LIB_DIR_ENV) {
        dirs.push(dir);
    }
    dirs.extend(venv_cuda_roots().into_iter().map(|root| root.join("lib")));
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env_path(var) {
            dirs.push(home.join("lib64"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dedup(dirs)
}

/// Find the toolkit include directory (see [`find_include_dir`] for the order).
pub fn cuda_include_dir() -> Result<IncludeDir, GpuError> {
    let nvrtc_dir = nvrtc().ok().and_then(|info| info.lib_dir.clone());
    find_include_dir(
        &|var| std::env::var_os(var),
        &venv_cuda_roots(),
        nvrtc_dir.as_deref(),
    )
}

/// The search itself, with the environment and the `.venv-cuda` roots passed in
/// so that it can be tested. Order: `SSM_CUDA_INCLUDE` (which must then be
/// right: no fallback past an explicit setting), `CUDA_HOME/include`,
/// `CUDA_PATH/include`, `/usr/local/cuda/include`, `.venv-cuda`'s wheel,
/// and the `include/` beside the NVRTC library we loaded.
pub fn find_include_dir(
    env: &dyn Fn(&str) -> Option<OsString>,
    venv_roots: &[PathBuf],
    nvrtc_lib_dir: Option<&Path>,
) -> Result<IncludeDir, GpuError> {
    let non_empty = |var: &str| env(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(CUDA_INCLUDE_ENV) {
        return if dir.join(MARKER_HEADER).is_file() {
            Ok(IncludeDir {
                path: dir,
                origin: CUDA_INCLUDE_ENV.to_string(),
            })
        } else {
            Err(GpuError::NoToolkitHeaders {
                searched: vec![dir],
            })
        };
    }
    let mut candidates: Vec<(PathBuf, String)> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = non_empty(var) {
            candidates.push((home.join("include"), format!("{var}/include")));
        }
    }
    candidates.push((
        PathBuf::from("/usr/local/cuda/include"),
        "/usr/local/cuda/include".to_string(),
    ));
    for root in venv_roots {
        candidates.push((root.join("include"), ".venv-cuda (pip wheel)".to_string()));
    }
    if let Some(lib_dir) = nvrtc_lib_dir {
        if let Some(parent) = lib_dir.parent() {
            candidates.push((
                parent.join("include"),
                "beside the NVRTC library".to_string(),
            ));
        }
    }
    for (path, origin) in &candidates {
        if path.join(MARKER_HEADER).is_file() {
            return Ok(IncludeDir {
                path: path.clone(),
                origin: origin.clone(),
            });
        }
    }
    Err(GpuError::NoToolkitHeaders {
        searched: dedup(candidates.into_iter().map(|(p, _)| p).collect()),
    })
}

/// `<repo>/.venv-cuda/lib/python3*/site-packages/nvidia/cu13` for every
/// repository root we can think of: the current directory and its ancestors,
/// the executable's ancestors (binaries carried to the device sit in `.gpu/`),
/// and the workspace this crate was built in.
pub fn venv_cuda_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let mut found = Vec::new();
    for root in dedup(roots) {
        let lib = root.join(".venv-cuda").join("lib");
        let Ok(pythons) = entries_named(&lib, "python3") else {
            continue;
        };
        for python in pythons {
            let cu13 = python.join("site-packages/nvidia/cu13");
            if cu13.is_dir() {
                found.push(cu13.canonicalize().unwrap_or(cu13));
            }
        }
    }
    dedup(found)
}

/// The entries of `dir` whose file names start with `prefix`, sorted (so that
/// what is loaded or searched first does not depend on the directory's order).
/// Entries that cannot be read are skipped.
fn entries_named(dir: &Path, prefix: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Remove repeats (after canonicalizing what exists), keeping the first.
fn dedup(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    paths
        .into_iter()
        .filter(|p| seen.insert(p.canonicalize().unwrap_or_else(|_| p.clone())))
        .collect()
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn include_dir_with_marker() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARKER_HEADER), "").unwrap();
        dir
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn explicit_include_setting_wins() {
        let good = include_dir_with_marker();
        let other = include_dir_with_marker();
        let env = |var: &str| match var {
            CUDA_INCLUDE_ENV => Some(good.path().as_os_str().to_owned()),
            "CUDA_HOME" => Some(other.path().parent().unwrap().as_os_str().to_owned()),
            _ => None,
        };
        let found = find_include_dir(&env, &[], None).unwrap();
        assert_eq!(found.path, good.path());
        assert_eq!(found.origin, CUDA_INCLUDE_ENV);
    }

    #[test]
    fn a_wrong_explicit_setting_fails_instead_of_falling_back() {
        let empty = tempfile::tempdir().unwrap();
        let venv = include_dir_with_marker();
        let env =
            |var: &str| (var == CUDA_INCLUDE_ENV).then(|| empty.path().as_os_str().to_owned());
        let venv_root = venv.path().parent().unwrap().to_path_buf();
        let err = find_include_dir(&env, &[venv_root], None).unwrap_err();
        match err {
            GpuError::NoToolkitHeaders { searched } => assert_eq!(searched, [empty.path()]),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn falls_back_to_the_venv_wheel_and_then_beside_nvrtc() {
        let wheel = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(wheel.path().join("include")).unwrap();
        std::fs::write(wheel.path().join("include").join(MARKER_HEADER), "").unwrap();
        if Path::new("/usr/local/cuda/include")
            .join(MARKER_HEADER)
            .is_file()
        {
            eprintln!("SKIPPED falls_back_to_the_venv_wheel: this machine has /usr/local/cuda");
            return;
        }
        let found = find_include_dir(&no_env, &[wheel.path().to_path_buf()], None).unwrap();
        assert_eq!(found.path, wheel.path().join("include"));
        let lib_dir = wheel.path().join("lib");
        let found = find_include_dir(&no_env, &[], Some(&lib_dir)).unwrap();
        assert_eq!(found.origin, "beside the NVRTC library");
    }

    #[test]
    fn nothing_found_lists_every_searched_directory() {
        if Path::new("/usr/local/cuda/include")
            .join(MARKER_HEADER)
            .is_file()
        {
            eprintln!(
                "SKIPPED nothing_found_lists_every_searched_directory: /usr/local/cuda exists"
            );
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let env = |var: &str| (var == "CUDA_HOME").then(|| home.path().as_os_str().to_owned());
        let err = find_include_dir(&env, &[], None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&home.path().join("include").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("/usr/local/cuda/include"), "{msg}");
        assert!(msg.contains(CUDA_INCLUDE_ENV), "{msg}");
    }

    #[test]
    fn probes_use_names_cudarc_also_tries() {
        if cfg!(target_os = "linux") {
            assert_eq!(driver_names(), ["libcuda.so", "libcuda.so.1"]);
            assert_eq!(nvrtc_names(), ["libnvrtc.so", "libnvrtc.so.13"]);
        }
    }

    #[test]
    fn a_missing_library_is_reported_absent_not_a_panic() {
        assert!(!library_loadable(&lib_names(
            "ssm-no-such-library",
            &["13"]
        )));
    }
}
