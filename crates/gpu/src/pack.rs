//! Kernel packs: kernel modules compiled ahead of time, so that a machine
//! without NVRTC (or without the CUDA headers) can still run every kernel the
//! pack holds.
//!
//! A pack is a directory:
//!
//! ```text
//! manifest.json          format, what it covers, one entry per module
//! <key>.cubin            SASS for a real target (sm_80, sm_86, sm_89, sm_90)
//! <key>.ptx              PTX for compute_90 (the driver JITs it on newer devices)
//! <key>.log              NVRTC's log of that compile (ptxas's resource report)
//! ```
//!
//! Entries are found by [`pack_key`]: a sha256 of the format tag, the target,
//! the defines sorted by name, any extra NVRTC flags and the flattened kernel
//! source. Unlike the compile cache's key ([`crate::cache::cache_key`]) it holds
//! neither the CUDA include directory nor the NVRTC version, so a pack built on
//! one machine is found on any other: what decides whether an entry applies is
//! the source text and the defines, which are the same everywhere. (The pack
//! records the NVRTC version that built it, for reports.)
//!
//! [`crate::Compiler`] looks in the pack configured by `SSM_KERNEL_PACK` before
//! it compiles; without NVRTC it runs from the pack alone, and a variant the
//! pack lacks becomes [`GpuError::NotInPack`]. Packs are written by
//! [`PackWriter`] (`ssmk kernels pack`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::nvrtc::{Arch, CompiledModule};
use crate::{DeviceLimits, GpuError};

/// Directory of the kernel pack to use at run time.
pub const PACK_ENV: &str = "SSM_KERNEL_PACK";
/// Set to `1` to use only the pack even where NVRTC is present (to prove that a
/// deployment needs no NVRTC, or that a pack covers a workload).
pub const PACK_ONLY_ENV: &str = "SSM_KERNEL_PACK_ONLY";
/// The manifest's file name inside a pack directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Bumped when the key or the layout of a pack changes; part of every key.
pub const PACK_FORMAT: &str = "ssm-kernel-pack-v1";

/// The key of one compiled module in a pack: hex sha256 of [`PACK_FORMAT`],
/// `arch`, the defines sorted by name, `extra_flags` (in order) and the
/// flattened source. Every field is length-prefixed, so no two different
/// inputs hash the same bytes.
pub fn pack_key(
    arch: Arch,
    defines: &[(&str, String)],
    extra_flags: &[String],
    source_text: &str,
) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(PACK_FORMAT.as_bytes());
    field(arch.name().as_bytes());
    let sorted = sorted_defines(defines);
    field(&(sorted.len() as u64).to_le_bytes());
    for (name, value) in &sorted {
        field(name.as_bytes());
        field(value.as_bytes());
    }
    field(&(extra_flags.len() as u64).to_le_bytes());
    for flag in extra_flags {
        field(flag.as_bytes());
    }
    field(source_text.as_bytes());
    hex::encode(hasher.finalize())
}

/// Hex sha256 of a flattened source (recorded per entry, to tell "other
/// kernel sources" from "other defines" when a lookup misses).
pub fn source_sha256(source_text: &str) -> String {
    hex::encode(Sha256::digest(source_text.as_bytes()))
}

/// The defines as owned pairs, sorted by name (then value).
pub fn sorted_defines(defines: &[(&str, String)]) -> Vec<(String, String)> {
    let mut sorted: Vec<(String, String)> = defines
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    sorted.sort();
    sorted
}

/// `A=1 B=2`, for messages.
pub fn render_defines(defines: &[(String, String)]) -> String {
    if defines.is_empty() {
        return "(none)".to_string();
    }
    defines
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The device classes a pack plans each target's variants for, with their
/// limits: the devices that run that target's modules. A device whose limits
/// differ (shared memory per block and per SM, threads, blocks or registers
/// per SM) may plan variants with other defines, which then miss the pack.
pub fn planning_profiles(arch: Arch) -> Vec<(&'static str, DeviceLimits)> {
    match arch {
        Arch::Sm80 => vec![("A100 (8.0)", DeviceLimits::A100)],
        Arch::Sm86 => vec![("GA10x: RTX 30, A10, A40 (8.6)", DeviceLimits::SM86_SMALL)],
        Arch::Sm89 => vec![("Ada: RTX 40, L4, L40S (8.9)", DeviceLimits::SM89_ADA)],
        Arch::Sm90 | Arch::Sm90a => vec![("H100, H200 (9.0)", DeviceLimits::H100_SXM)],
        Arch::Compute90 => vec![
            ("B200 (10.0)", DeviceLimits::B200),
            ("RTX 50 (12.0)", DeviceLimits::SM120_CONSUMER),
        ],
    }
}

/// What [`GpuError::NotInPack`] says: the variant, the pack, why it missed
/// and how to get the module.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "kernel {file} (defines: {defines}) for {arch} is not in the kernel pack {}: {why}. \
     {nvrtc}. To run it, install NVRTC 13 and the CUDA headers (.ci/install-cuda.sh), or \
     build a pack that includes it (`ssmk kernels pack --arch {arch} --out DIR`, with the \
     shape added to the pack's coverage if it is not in it: see `ssmk kernels pack --help`)",
    pack.display()
)]
pub struct PackMiss {
    /// The main kernel file, relative to `kernels/`.
    pub file: String,
    /// `NAME=value` pairs, sorted by name.
    pub defines: String,
    /// The target that was looked for.
    pub arch: Arch,
    /// The pack directory.
    pub pack: PathBuf,
    /// Why the pack has no such module ([`KernelPack::explain_miss`]).
    pub why: String,
    /// Why NVRTC was not used instead.
    pub nvrtc: String,
}

/// One target of a pack and the device limits its variants were planned with
/// (the kernels' selection reads them, and some reach the kernels as defines,
/// e.g. `SSD_MAX_SMEM`: a device with other limits may plan other variants).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackTarget {
    /// The target (SASS `sm_*` or PTX `compute_*`).
    pub arch: Arch,
    /// `(device class, limits)` planned for, e.g. `("A100", ...)`.
    pub planned_for: Vec<(String, DeviceLimits)>,
}

/// One module in a pack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackEntry {
    /// [`pack_key`] of the module.
    pub key: String,
    /// The target the module was compiled for.
    pub arch: Arch,
    /// The main kernel file, relative to `kernels/` (e.g. `mamba2/ssd_fused.cu`).
    pub source: String,
    /// [`source_sha256`] of the flattened source it was compiled from.
    pub source_sha256: String,
    /// Sorted by name.
    pub defines: Vec<(String, String)>,
    /// The labels of the variants that share this module (for reports).
    pub labels: Vec<String>,
    /// The image, relative to the pack directory.
    pub file: String,
    /// NVRTC's log, relative to the pack directory.
    pub log_file: String,
    /// Hex sha256 of the image, checked when it is loaded.
    pub sha256: String,
    /// Size of the image in bytes.
    pub bytes: u64,
    /// Seconds NVRTC took (for the build report).
    pub compile_seconds: f64,
}

/// The manifest of a pack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackManifest {
    /// [`PACK_FORMAT`] of the writer.
    pub format: String,
    /// `crate::KERNELS_HASH` (or the hash of `SSM_KERNEL_DIR`) of the sources.
    pub kernels_hash: String,
    /// The NVRTC version that built it (not part of any key).
    pub nvrtc: String,
    /// Extra NVRTC flags every entry was compiled with (part of every key).
    pub extra_flags: Vec<String>,
    /// Whether the modules carry source lines for profilers (`-lineinfo`).
    #[serde(default)]
    pub line_info: bool,
    /// What built it (`ssmk <version>`).
    pub built_by: String,
    /// What the pack covers, in words (one line per family).
    pub coverage: Vec<String>,
    /// The targets the pack was built for.
    pub targets: Vec<PackTarget>,
    /// Every module of the pack.
    pub entries: Vec<PackEntry>,
}

/// A pack opened for lookups.
#[derive(Debug)]
pub struct KernelPack {
    dir: PathBuf,
    manifest: PackManifest,
    by_key: HashMap<String, usize>,
}

impl KernelPack {
    /// Open the pack in `dir` (reads only its manifest).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, GpuError> {
        let dir = dir.into();
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| GpuError::Io {
            what: "reading kernel pack manifest",
            path: path.clone(),
            source,
        })?;
        let manifest: PackManifest = serde_json::from_str(&text).map_err(|e| GpuError::Pack {
            path: path.clone(),
            message: format!("not a kernel pack manifest: {e}"),
        })?;
        if manifest.format != PACK_FORMAT {
            return Err(GpuError::Pack {
                path,
                message: format!(
                    "pack format `{}`, this build reads `{PACK_FORMAT}`: rebuild the pack with \
                     this version (`ssmk kernels pack`)",
                    manifest.format
                ),
            });
        }
        let by_key = manifest
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key.clone(), i))
            .collect();
        Ok(KernelPack {
            dir,
            manifest,
            by_key,
        })
    }

    /// The pack named by `SSM_KERNEL_PACK`: `None` when unset or empty, an
    /// error when set to something that is not a readable pack (a wrong
    /// setting must not silently fall back to NVRTC, or to nothing).
    pub fn from_env() -> Result<Option<Self>, GpuError> {
        match std::env::var_os(PACK_ENV) {
            Some(dir) if !dir.is_empty() => Self::open(PathBuf::from(dir)).map(Some),
            _ => Ok(None),
        }
    }

    /// The pack directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The parsed manifest.
    pub fn manifest(&self) -> &PackManifest {
        &self.manifest
    }
    /// Number of modules in the pack.
    pub fn len(&self) -> usize {
        self.manifest.entries.len()
    }
    /// Whether the pack holds no module.
    pub fn is_empty(&self) -> bool {
        self.manifest.entries.is_empty()
    }
    /// The entry for `key`, if the pack has one.
    pub fn entry(&self, key: &str) -> Option<&PackEntry> {
        self.by_key.get(key).map(|&i| &self.manifest.entries[i])
    }
    /// The targets the pack holds modules for.
    pub fn archs(&self) -> Vec<Arch> {
        let mut archs: Vec<Arch> = self.manifest.entries.iter().map(|e| e.arch).collect();
        archs.sort();
        archs.dedup();
        archs
    }

    /// The module for `key`: `Ok(None)` when the pack has no such entry, an
    /// error when it has one whose files are missing or corrupt (a broken pack
    /// is reported, not papered over by a recompile).
    pub fn load(&self, key: &str) -> Result<Option<CompiledModule>, GpuError> {
        let Some(entry) = self.entry(key) else {
            return Ok(None);
        };
        let image_path = self.dir.join(&entry.file);
        let cubin = std::fs::read(&image_path).map_err(|source| GpuError::Io {
            what: "reading kernel pack module",
            path: image_path.clone(),
            source,
        })?;
        let sha = hex::encode(Sha256::digest(&cubin));
        if sha != entry.sha256 {
            return Err(GpuError::Pack {
                path: image_path,
                message: format!(
                    "sha256 {sha} but the manifest says {} (a damaged or mixed-up pack: rebuild it)",
                    entry.sha256
                ),
            });
        }
        let log_path = self.dir.join(&entry.log_file);
        let log = std::fs::read_to_string(&log_path).map_err(|source| GpuError::Io {
            what: "reading kernel pack log",
            path: log_path,
            source,
        })?;
        Ok(Some(CompiledModule { cubin, log }))
    }

    /// Why the pack has no module for `source` with `defines` on `arch` and
    /// `source_text`: other sources, other defines, or another target.
    pub fn explain_miss(
        &self,
        source: &str,
        arch: Arch,
        defines: &[(String, String)],
        source_text: &str,
    ) -> String {
        let same_file: Vec<&PackEntry> = self
            .manifest
            .entries
            .iter()
            .filter(|e| e.source == source)
            .collect();
        if same_file.is_empty() {
            return format!("the pack has no module of {source} for any target");
        }
        let same_arch: Vec<&&PackEntry> = same_file.iter().filter(|e| e.arch == arch).collect();
        if same_arch.is_empty() {
            let archs: Vec<String> = {
                let mut a: Vec<Arch> = same_file.iter().map(|e| e.arch).collect();
                a.sort();
                a.dedup();
                a.iter().map(|a| a.to_string()).collect()
            };
            return format!(
                "the pack has {source} for {} but not for {arch}",
                archs.join(", ")
            );
        }
        let sha = source_sha256(source_text);
        if let Some(same_defines) = same_arch.iter().find(|e| e.defines == defines) {
            if same_defines.source_sha256 != sha {
                return format!(
                    "the pack holds these defines for {arch}, compiled from other kernel sources \
                     (pack built from kernels {}; these sources differ, e.g. edited or \
                     hot-reloaded through SSM_KERNEL_DIR)",
                    self.manifest.kernels_hash
                );
            }
            return format!(
                "the pack holds these defines for {arch} with other extra NVRTC flags \
                 (pack: [{}]; SSM_NVRTC_FLAGS changes every module)",
                self.manifest.extra_flags.join(" ")
            );
        }
        // The nearest entries: those that differ in the fewest defines.
        let differing = |e: &PackEntry| -> Vec<String> {
            let theirs: BTreeMap<&str, &str> = e
                .defines
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let ours: BTreeMap<&str, &str> = defines
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut names: Vec<&str> = theirs.keys().chain(ours.keys()).copied().collect();
            names.sort();
            names.dedup();
            names
                .into_iter()
                .filter(|n| theirs.get(n) != ours.get(n))
                .map(|n| {
                    format!(
                        "{n}={} (pack: {})",
                        ours.get(n).unwrap_or(&"unset"),
                        theirs.get(n).unwrap_or(&"unset")
                    )
                })
                .collect()
        };
        let nearest = same_arch
            .iter()
            .map(|e| differing(e))
            .min_by_key(|d| d.len())
            .unwrap_or_default();
        format!(
            "the pack has {} other variants of {source} for {arch}; the nearest differs in {}",
            same_arch.len(),
            nearest.join(", ")
        )
    }

    /// One line: where the pack is, what it holds and what built it.
    pub fn describe(&self) -> String {
        let archs: Vec<String> = self.archs().iter().map(|a| a.to_string()).collect();
        format!(
            "kernel pack {} ({} modules for {}; kernels {}, NVRTC {})",
            self.dir.display(),
            self.len(),
            archs.join(", "),
            short(&self.manifest.kernels_hash),
            self.manifest.nvrtc
        )
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Builds a pack directory: modules are written as they are added, the
/// manifest last (a pack without its manifest is not a pack, so a build that
/// stops half-way leaves nothing that could be used).
#[derive(Debug)]
pub struct PackWriter {
    dir: PathBuf,
    entries: Vec<PackEntry>,
    by_key: HashMap<String, usize>,
}

impl PackWriter {
    /// Start a pack in `dir`: created when missing; an existing manifest there
    /// is removed first, so the old pack is unusable until the new one is complete.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self, GpuError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| GpuError::Io {
            what: "creating kernel pack directory",
            path: dir.clone(),
            source,
        })?;
        let manifest = dir.join(MANIFEST_FILE);
        if manifest.exists() {
            std::fs::remove_file(&manifest).map_err(|source| GpuError::Io {
                what: "removing the old kernel pack manifest",
                path: manifest,
                source,
            })?;
        }
        Ok(PackWriter {
            dir,
            entries: Vec::new(),
            by_key: HashMap::new(),
        })
    }

    /// The directory being written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `key` is in the pack already (another label of the same module).
    pub fn contains(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// Record `label` as another name of the module `key` (already added).
    pub fn add_label(&mut self, key: &str, label: &str) -> bool {
        match self.by_key.get(key) {
            Some(&i) => {
                let labels = &mut self.entries[i].labels;
                if !labels.iter().any(|l| l == label) {
                    labels.push(label.to_string());
                }
                true
            }
            None => false,
        }
    }

    /// Write `module` under `key` and record it. Adding a key twice keeps the
    /// first module and adds the label.
    #[allow(clippy::too_many_arguments)] // one entry's fields, named at the call
    pub fn add(
        &mut self,
        key: &str,
        arch: Arch,
        source: &str,
        source_text: &str,
        defines: &[(&str, String)],
        label: &str,
        module: &CompiledModule,
        compile_seconds: f64,
    ) -> Result<(), GpuError> {
        if self.add_label(key, label) {
            return Ok(());
        }
        let extension = if module.is_ptx() { "ptx" } else { "cubin" };
        let file = format!("{key}.{extension}");
        let log_file = format!("{key}.log");
        write_file(&self.dir.join(&file), &module.cubin)?;
        write_file(&self.dir.join(&log_file), module.log.as_bytes())?;
        self.by_key.insert(key.to_string(), self.entries.len());
        self.entries.push(PackEntry {
            key: key.to_string(),
            arch,
            source: source.to_string(),
            source_sha256: source_sha256(source_text),
            defines: sorted_defines(defines),
            labels: vec![label.to_string()],
            file,
            log_file,
            sha256: hex::encode(Sha256::digest(&module.cubin)),
            bytes: module.cubin.len() as u64,
            compile_seconds,
        });
        Ok(())
    }

    /// The entries added so far (the manifest's, once finished).
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// Write the manifest (entries sorted by target, file and key, so that two
    /// builds of the same pack have the same manifest but for the timings) and
    /// return it.
    pub fn finish(mut self, mut manifest_fields: PackManifest) -> Result<PackManifest, GpuError> {
        self.entries
            .sort_by(|a, b| (a.arch, &a.source, &a.key).cmp(&(b.arch, &b.source, &b.key)));
        manifest_fields.format = PACK_FORMAT.to_string();
        manifest_fields.entries = self.entries;
        let text = serde_json::to_string_pretty(&manifest_fields).map_err(|e| GpuError::Pack {
            path: self.dir.join(MANIFEST_FILE),
            message: format!("serializing the manifest: {e}"),
        })?;
        write_file(&self.dir.join(MANIFEST_FILE), text.as_bytes())?;
        Ok(manifest_fields)
    }
}

/// A pack file written atomically ([`crate::cache::write_atomically`]).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), GpuError> {
    let what = ("writing kernel pack file", "renaming kernel pack file");
    crate::cache::write_atomically(path, bytes, what)
}

/// An empty manifest for [`PackWriter::finish`] to fill in.
impl Default for PackManifest {
    fn default() -> Self {
        PackManifest {
            format: PACK_FORMAT.to_string(),
            kernels_hash: String::new(),
            nvrtc: String::new(),
            extra_flags: Vec::new(),
            line_info: false,
            built_by: String::new(),
            coverage: Vec::new(),
            targets: Vec::new(),
            entries: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defines(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    fn module(bytes: &[u8]) -> CompiledModule {
        CompiledModule {
            cubin: bytes.to_vec(),
            log: "ptxas info    : Used 8 registers".into(),
        }
    }

    #[test]
    fn key_ignores_define_order_and_changes_with_every_input() {
        let d = defines(&[("N", "16"), ("DTYPE", "2")]);
        let base = pack_key(Arch::Sm90, &d, &[], "src");
        assert_eq!(base.len(), 64);
        let reordered = defines(&[("DTYPE", "2"), ("N", "16")]);
        assert_eq!(base, pack_key(Arch::Sm90, &reordered, &[], "src"));
        assert_ne!(base, pack_key(Arch::Sm80, &d, &[], "src"));
        assert_ne!(base, pack_key(Arch::Compute90, &d, &[], "src"));
        assert_ne!(base, pack_key(Arch::Sm90, &d, &[], "src "));
        assert_ne!(
            base,
            pack_key(
                Arch::Sm90,
                &defines(&[("N", "32"), ("DTYPE", "2")]),
                &[],
                "src"
            )
        );
        assert_ne!(
            base,
            pack_key(Arch::Sm90, &d, &["-maxrregcount=64".into()], "src")
        );
        // Length prefixes keep the boundaries: N=1,M=23 is not N=12,M=3.
        assert_ne!(
            pack_key(Arch::Sm90, &defines(&[("M", "23"), ("N", "1")]), &[], ""),
            pack_key(Arch::Sm90, &defines(&[("M", "3"), ("N", "12")]), &[], "")
        );
    }

    /// The pack key is what a pack built elsewhere is found by: the compile
    /// cache's key changes with the include directory and the NVRTC version,
    /// the pack key has neither.
    #[test]
    fn key_is_the_same_on_another_machine() {
        let d = defines(&[("N", "16")]);
        let options_here =
            crate::nvrtc::compile_options(Arch::Sm90, Path::new("/opt/cuda-13.0/include"), &d, &[])
                .unwrap();
        let options_there = crate::nvrtc::compile_options(
            Arch::Sm90,
            Path::new("/home/ci/.venv-cuda/include"),
            &d,
            &[],
        )
        .unwrap();
        let cache_here = crate::cache::cache_key("src", &options_here, (13, 0));
        let cache_there = crate::cache::cache_key("src", &options_there, (13, 2));
        assert_ne!(cache_here, cache_there);
        // The pack key takes no include dir and no NVRTC version at all.
        let here = pack_key(Arch::Sm90, &d, &[], "src");
        let there = pack_key(Arch::Sm90, &defines(&[("N", "16")]), &[], "src");
        assert_eq!(here, there);
        // And the recipe is pinned (computed independently, in Python, from the
        // doc comment of `pack_key`): a change to it must bump PACK_FORMAT.
        assert_eq!(
            pack_key(Arch::Sm80, &defines(&[("N", "16")]), &[], "src"),
            "0ab13d63efca337014f23fa956d14b3fe52a3ac376561cc59e9afd8e4d5e55e4"
        );
    }

    fn sample_pack(dir: &Path) -> (String, String) {
        let mut writer = PackWriter::create(dir).unwrap();
        let d = defines(&[("N", "16"), ("DTYPE", "2")]);
        let key = pack_key(Arch::Sm90, &d, &[], "text of k.cu");
        let ptx_key = pack_key(Arch::Compute90, &d, &[], "text of k.cu");
        // (key, arch, label, module, compile seconds) of each `add`, in order.
        // The second is a second label of the first module: it adds no file.
        let adds: [(&str, Arch, &str, &[u8], f64); 3] = [
            (&key, Arch::Sm90, "fam.k.n16", b"\x7fELF-sm90", 0.5),
            (&key, Arch::Sm90, "fam.k.alias", b"ignored", 0.5),
            (
                &ptx_key,
                Arch::Compute90,
                "fam.k.n16",
                b".version 9.0\0",
                0.25,
            ),
        ];
        for (key, arch, label, bytes, seconds) in adds {
            let source = "fam/k.cu";
            let text = "text of k.cu";
            let compiled = module(bytes);
            writer
                .add(key, arch, source, text, &d, label, &compiled, seconds)
                .unwrap();
        }
        writer
            .finish(PackManifest {
                kernels_hash: "abc123".into(),
                nvrtc: "13.0".into(),
                ..PackManifest::default()
            })
            .unwrap();
        (key, ptx_key)
    }

    #[test]
    fn written_pack_opens_and_loads_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key, ptx_key) = sample_pack(dir.path());
        let pack = KernelPack::open(dir.path()).unwrap();
        assert_eq!(pack.len(), 2);
        assert_eq!(pack.archs(), [Arch::Sm90, Arch::Compute90]);
        let entry = pack.entry(&key).unwrap();
        assert_eq!(entry.labels, ["fam.k.n16", "fam.k.alias"]);
        assert_eq!(entry.defines[0], ("DTYPE".to_string(), "2".to_string()));
        assert!(entry.file.ends_with(".cubin"));
        assert!(pack.entry(&ptx_key).unwrap().file.ends_with(".ptx"));
        let loaded = pack.load(&key).unwrap().unwrap();
        assert_eq!(loaded.cubin, b"\x7fELF-sm90");
        assert!(loaded.log.contains("Used 8 registers"));
        assert!(pack.load(&ptx_key).unwrap().unwrap().is_ptx());
        assert_eq!(pack.load(&"0".repeat(64)).unwrap(), None);
        assert!(pack.describe().contains("2 modules for sm_90, compute_90"));
    }

    #[test]
    fn a_damaged_module_is_an_error_not_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = sample_pack(dir.path());
        std::fs::write(dir.path().join(format!("{key}.cubin")), b"other bytes").unwrap();
        let pack = KernelPack::open(dir.path()).unwrap();
        let err = pack.load(&key).unwrap_err();
        assert!(matches!(err, GpuError::Pack { .. }), "{err}");
        assert!(err.to_string().contains("rebuild"), "{err}");
        std::fs::remove_file(dir.path().join(format!("{key}.cubin"))).unwrap();
        assert!(matches!(pack.load(&key), Err(GpuError::Io { .. })));
    }

    #[test]
    fn opening_a_non_pack_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            KernelPack::open(dir.path()),
            Err(GpuError::Io { .. })
        ));
        std::fs::write(dir.path().join(MANIFEST_FILE), "{\"format\": 1}").unwrap();
        let err = KernelPack::open(dir.path()).unwrap_err();
        assert!(matches!(err, GpuError::Pack { .. }), "{err}");
        let other_format = PackManifest {
            format: "ssm-kernel-pack-v0".into(),
            ..PackManifest::default()
        };
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            serde_json::to_string(&other_format).unwrap(),
        )
        .unwrap();
        let err = KernelPack::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("ssm-kernel-pack-v0") && err.contains("rebuild"),
            "{err}"
        );
    }

    #[test]
    fn rebuilding_removes_the_old_manifest_first() {
        let dir = tempfile::tempdir().unwrap();
        sample_pack(dir.path());
        let writer = PackWriter::create(dir.path()).unwrap();
        assert!(KernelPack::open(dir.path()).is_err());
        drop(writer);
    }

    #[test]
    fn misses_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        sample_pack(dir.path());
        let pack = KernelPack::open(dir.path()).unwrap();
        let ours = |pairs: &[(&'static str, &str)]| sorted_defines(&defines(pairs));
        let why = pack.explain_miss("fam/other.cu", Arch::Sm90, &[], "");
        assert!(why.contains("no module of fam/other.cu"), "{why}");
        let d = ours(&[("N", "16"), ("DTYPE", "2")]);
        let why = pack.explain_miss("fam/k.cu", Arch::Sm86, &d, "text of k.cu");
        assert!(why.contains("sm_90, compute_90 but not for sm_86"), "{why}");
        let why = pack.explain_miss("fam/k.cu", Arch::Sm90, &d, "edited text");
        assert!(
            why.contains("other kernel sources") && why.contains("abc123"),
            "{why}"
        );
        let why = pack.explain_miss(
            "fam/k.cu",
            Arch::Sm90,
            &ours(&[("N", "32"), ("DTYPE", "2")]),
            "text of k.cu",
        );
        assert!(why.contains("N=32 (pack: 16)"), "{why}");
    }
}
