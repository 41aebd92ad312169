//! The compile pipeline shared by the GPU runtime and the offline resource
//! report: resolve includes, build options, look in the kernel pack and the
//! cache, run NVRTC, store. Needs NVRTC and the toolkit headers, never the
//! driver or a GPU; without NVRTC it can run from a kernel pack alone
//! ([`crate::pack`]).

use std::sync::Arc;

use crate::cache::{cache_key, ModuleCache};
use crate::nvrtc::{
    check_syntax, compile_for, compile_options, compile_options_with, extra_flags_from_env, Arch,
    CompiledModule,
};
use crate::pack::{pack_key, render_defines, sorted_defines, KernelPack, PackMiss, PACK_ONLY_ENV};
use crate::ptxas::{parse_log, PtxasFunction};
use crate::source::{resolve, ResolvedSource, SourceRoot};
use crate::toolkit::{cuda_include_dir, nvrtc, IncludeDir, NvrtcInfo};
use crate::{GpuError, KernelSource};

/// Everything a compile depends on besides the source and its defines.
#[derive(Clone, Debug)]
pub struct Compiler {
    root: SourceRoot,
    /// NVRTC and the headers; `None` in pack-only mode.
    toolchain: Option<Toolchain>,
    /// Why there is no toolchain (for the pack-miss error).
    no_toolchain: Option<String>,
    pack: Option<Arc<KernelPack>>,
    cache: ModuleCache,
    extra_flags: Vec<String>,
    /// `-lineinfo` in NVRTC compiles (on, but for kernel-pack builds).
    line_info: bool,
}

#[derive(Clone, Debug)]
struct Toolchain {
    include: IncludeDir,
    nvrtc: &'static NvrtcInfo,
}

impl Toolchain {
    fn find() -> Result<Self, GpuError> {
        Ok(Toolchain {
            nvrtc: nvrtc()?,
            include: cuda_include_dir()?,
        })
    }
}

/// Where a compiled module came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ModuleOrigin {
    /// The kernel pack (compiled ahead of time).
    Pack,
    /// The on-disk compile cache.
    Cache,
    /// NVRTC, just now.
    Compiled,
}

/// One compiled translation unit and what we know about it.
#[derive(Clone, Debug)]
pub struct CompileOutput {
    /// The compiled image (cubin, or PTX for a `compute_*` target) and its log.
    pub module: CompiledModule,
    /// The key the module is known by: the pack key when it came from the
    /// pack, else the cache key (hex sha256 of source, options and NVRTC version).
    pub key: String,
    /// True when NVRTC did not run (the module came from the cache or the pack).
    pub from_cache: bool,
    /// Where the module came from: the pack, the cache or NVRTC.
    pub origin: ModuleOrigin,
    /// Every kernel file that went into it, main file first.
    pub files: Vec<String>,
    /// ptxas's report of every function in it (empty for PTX).
    pub functions: Vec<PtxasFunction>,
}

impl Compiler {
    /// Sources from `SSM_KERNEL_DIR` or the embedded copies, the cache from
    /// `SSM_KERNEL_CACHE`, extra flags from `SSM_NVRTC_FLAGS`, the kernel pack
    /// from `SSM_KERNEL_PACK`. Without NVRTC (or the headers) this is a
    /// pack-only compiler when a pack is configured, else `NoNvrtc` /
    /// `NoToolkitHeaders`; `SSM_KERNEL_PACK_ONLY=1` asks for pack-only mode
    /// even where NVRTC is present. A set `SSM_KERNEL_PACK` that is not a
    /// readable pack is an error, never a silent fallback.
    pub fn from_env() -> Result<Self, GpuError> {
        Self::choose(
            SourceRoot::from_env(),
            ModuleCache::from_env(),
            extra_flags_from_env(),
            KernelPack::from_env()?,
            std::env::var(PACK_ONLY_ENV).is_ok_and(|v| v == "1"),
            Toolchain::find,
        )
    }

    /// [`Compiler::from_env`]'s decision, with its inputs passed in (tested below).
    fn choose(
        root: SourceRoot,
        cache: ModuleCache,
        extra_flags: Vec<String>,
        pack: Option<KernelPack>,
        pack_only: bool,
        find_toolchain: impl FnOnce() -> Result<Toolchain, GpuError>,
    ) -> Result<Self, GpuError> {
        match pack {
            Some(pack) if pack_only => Ok(Self::pack_only(
                root,
                pack,
                extra_flags,
                format!("{PACK_ONLY_ENV}=1"),
            )),
            None if pack_only => Err(GpuError::InvalidArgument(format!(
                "{PACK_ONLY_ENV}=1 needs a kernel pack: set {} to its directory",
                crate::pack::PACK_ENV
            ))),
            Some(pack) => match find_toolchain() {
                Ok(toolchain) => {
                    Ok(Self::with_toolchain(root, toolchain, cache, extra_flags).with_pack(pack))
                }
                // Only a missing NVRTC or missing headers mean "run from the pack";
                // anything else is a broken installation to report.
                Err(e) if e.is_unavailable() => {
                    Ok(Self::pack_only(root, pack, extra_flags, e.to_string()))
                }
                Err(e) => Err(e),
            },
            None => Ok(Self::with_toolchain(
                root,
                find_toolchain()?,
                cache,
                extra_flags,
            )),
        }
    }

    /// A compiler with NVRTC; fails with `NoNvrtc` or `NoToolkitHeaders` when
    /// either is missing.
    pub fn new(
        root: SourceRoot,
        cache: ModuleCache,
        extra_flags: Vec<String>,
    ) -> Result<Self, GpuError> {
        Ok(Self::with_toolchain(
            root,
            Toolchain::find()?,
            cache,
            extra_flags,
        ))
    }

    fn with_toolchain(
        root: SourceRoot,
        toolchain: Toolchain,
        cache: ModuleCache,
        extra_flags: Vec<String>,
    ) -> Self {
        Compiler {
            root,
            toolchain: Some(toolchain),
            no_toolchain: None,
            pack: None,
            cache,
            extra_flags,
            line_info: true,
        }
    }

    /// A compiler that never runs NVRTC: every module comes from `pack`, and a
    /// variant it lacks is [`GpuError::NotInPack`] (`why_no_nvrtc` says why
    /// NVRTC is not used, in that error).
    pub fn pack_only(
        root: SourceRoot,
        pack: KernelPack,
        extra_flags: Vec<String>,
        why_no_nvrtc: String,
    ) -> Self {
        Compiler {
            root,
            toolchain: None,
            no_toolchain: Some(why_no_nvrtc),
            pack: Some(Arc::new(pack)),
            cache: ModuleCache::disabled(),
            extra_flags,
            line_info: true,
        }
    }

    /// Compile without `-lineinfo` (cubins about four times smaller; profilers
    /// then show no source lines): what kernel packs are built with. Line info
    /// changes no code, so the module runs as the one compiled with it.
    pub fn without_line_info(mut self) -> Self {
        self.line_info = false;
        self
    }

    /// Whether NVRTC compiles carry `-lineinfo`.
    pub fn line_info(&self) -> bool {
        self.line_info
    }

    /// Look in `pack` before compiling.
    pub fn with_pack(mut self, pack: KernelPack) -> Self {
        self.pack = Some(Arc::new(pack));
        self
    }

    /// Where kernel sources are read from (embedded, or `SSM_KERNEL_DIR`).
    pub fn source_root(&self) -> &SourceRoot {
        &self.root
    }
    /// The CUDA headers NVRTC uses; `None` in pack-only mode.
    pub fn include_dir(&self) -> Option<&IncludeDir> {
        self.toolchain.as_ref().map(|t| &t.include)
    }
    /// The NVRTC this compiler runs; `None` in pack-only mode.
    pub fn nvrtc(&self) -> Option<&NvrtcInfo> {
        self.toolchain.as_ref().map(|t| t.nvrtc)
    }
    /// The kernel pack looked in first, if any.
    pub fn pack(&self) -> Option<&KernelPack> {
        self.pack.as_deref()
    }
    /// True when this compiler cannot run NVRTC (modules come from the pack only).
    pub fn is_pack_only(&self) -> bool {
        self.toolchain.is_none()
    }
    /// The on-disk module cache.
    pub fn cache(&self) -> &ModuleCache {
        &self.cache
    }
    /// Extra NVRTC flags from `SSM_NVRTC_FLAGS` (part of every cache key).
    pub fn extra_flags(&self) -> &[String] {
        &self.extra_flags
    }

    /// One line saying where sources, headers, NVRTC, the pack and the cache come from.
    pub fn describe(&self) -> String {
        let pack = self
            .pack
            .as_ref()
            .map_or(String::new(), |p| format!("; {}", p.describe()));
        match &self.toolchain {
            Some(t) => format!(
                "NVRTC {} from {}; CUDA headers {} ({}); kernel sources {}; cache {}{pack}",
                t.nvrtc.version_string(),
                t.nvrtc.location,
                t.include.path.display(),
                t.include.origin,
                self.root.describe(),
                self.cache
                    .dir()
                    .map_or("off".to_string(), |d| d.display().to_string()),
            ),
            None => format!(
                "no NVRTC ({}): modules from the kernel pack only; kernel sources {}{pack}",
                self.no_toolchain.as_deref().unwrap_or("pack-only mode"),
                self.root.describe(),
            ),
        }
    }

    fn toolchain(&self) -> Result<&Toolchain, GpuError> {
        self.toolchain.as_ref().ok_or_else(|| {
            GpuError::NoNvrtc(
                self.no_toolchain
                    .clone()
                    .unwrap_or_else(|| "pack-only mode".to_string()),
            )
        })
    }

    /// Run NVRTC's front end on `src` with `defines` for `arch` (every
    /// `static_assert` and `#error`, no code generation, no cache); the log on
    /// success, `GpuError::Compile` with the diagnostics otherwise.
    pub fn check_front_end(
        &self,
        src: &KernelSource,
        defines: &[(&str, String)],
        arch: Arch,
    ) -> Result<String, GpuError> {
        let toolchain = self.toolchain()?;
        let resolved = resolve(src, &self.root)?;
        let options = compile_options(arch, &toolchain.include.path, defines, &self.extra_flags)?;
        check_syntax(&resolved.main, &resolved.text, &options)
    }

    /// Compile `src` with `defines` for `arch`: from the kernel pack when it
    /// has the module, else through the cache and NVRTC.
    pub fn compile(
        &self,
        src: &KernelSource,
        defines: &[(&str, String)],
        arch: Arch,
    ) -> Result<CompileOutput, GpuError> {
        let resolved = resolve(src, &self.root)?;
        if let Some(output) = self.look_in_pack(&resolved, defines, arch)? {
            return Ok(output);
        }
        self.compile_resolved(resolved, defines, arch)
    }

    /// Compile with NVRTC (through the cache), never looking in the pack: what
    /// the pack builder uses. Also returns the flattened source, for the pack key.
    pub fn compile_fresh(
        &self,
        src: &KernelSource,
        defines: &[(&str, String)],
        arch: Arch,
    ) -> Result<(CompileOutput, String), GpuError> {
        let resolved = resolve(src, &self.root)?;
        let text = resolved.text.clone();
        Ok((self.compile_resolved(resolved, defines, arch)?, text))
    }

    /// The pack key of `src` with `defines` on `arch` under this compiler's
    /// sources and extra flags.
    pub fn pack_key(
        &self,
        src: &KernelSource,
        defines: &[(&str, String)],
        arch: Arch,
    ) -> Result<String, GpuError> {
        let resolved = resolve(src, &self.root)?;
        Ok(pack_key(arch, defines, &self.extra_flags, &resolved.text))
    }

    /// The module from the pack; `Ok(None)` to compile instead; the miss error
    /// in pack-only mode.
    fn look_in_pack(
        &self,
        resolved: &ResolvedSource,
        defines: &[(&str, String)],
        arch: Arch,
    ) -> Result<Option<CompileOutput>, GpuError> {
        let Some(pack) = &self.pack else {
            return Ok(None);
        };
        let key = pack_key(arch, defines, &self.extra_flags, &resolved.text);
        if let Some(module) = pack.load(&key)? {
            let functions = parse_log(&module.log);
            return Ok(Some(CompileOutput {
                module,
                key,
                from_cache: true,
                origin: ModuleOrigin::Pack,
                files: resolved.files.clone(),
                functions,
            }));
        }
        if self.toolchain.is_some() {
            return Ok(None);
        }
        let sorted = sorted_defines(defines);
        Err(GpuError::NotInPack(Box::new(PackMiss {
            file: resolved.main.clone(),
            why: pack.explain_miss(&resolved.main, arch, &sorted, &resolved.text),
            defines: render_defines(&sorted),
            arch,
            pack: pack.dir().to_path_buf(),
            nvrtc: format!(
                "NVRTC is not used: {}",
                self.no_toolchain.as_deref().unwrap_or("pack-only mode")
            ),
        })))
    }

    fn compile_resolved(
        &self,
        resolved: ResolvedSource,
        defines: &[(&str, String)],
        arch: Arch,
    ) -> Result<CompileOutput, GpuError> {
        let toolchain = self.toolchain()?;
        let options = compile_options_with(
            arch,
            &toolchain.include.path,
            defines,
            &self.extra_flags,
            self.line_info,
        )?;
        let key = cache_key(&resolved.text, &options, toolchain.nvrtc.version);
        let (module, origin) = match self.cache.load(&key) {
            Some(module) => (module, ModuleOrigin::Cache),
            None => {
                let module = compile_for(arch, &resolved.main, &resolved.text, &options)?;
                if let Err(e) = self.cache.store(&key, &module) {
                    // A read-only cache costs compile time, not correctness.
                    eprintln!("ssm-gpu: warning: not caching {}: {e}", resolved.main);
                }
                (module, ModuleOrigin::Compiled)
            }
        };
        let functions = parse_log(&module.log);
        Ok(CompileOutput {
            module,
            key,
            from_cache: origin != ModuleOrigin::Compiled,
            origin,
            files: resolved.files,
            functions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{PackManifest, PackWriter};
    use std::path::Path;

    const SRC: KernelSource = KernelSource {
        path: "fam/k.cu",
        embedded: "unused: the tests read from disk",
    };

    fn defines(n: &str) -> Vec<(&'static str, String)> {
        vec![("N", n.to_string()), ("DTYPE", "2".to_string())]
    }

    /// A kernels/ tree with `fam/k.cu` including a header, and a pack holding
    /// that file with N=16 for sm_86.
    fn tree_and_pack(dir: &Path) -> (SourceRoot, KernelPack) {
        let kernels = dir.join("kernels");
        std::fs::create_dir_all(kernels.join("fam")).unwrap();
        std::fs::write(kernels.join("fam/k.cu"), "#include \"h.cuh\"\nint k;\n").unwrap();
        std::fs::write(kernels.join("fam/h.cuh"), "int h;\n").unwrap();
        let root = SourceRoot::Disk(kernels);
        let text = resolve(&SRC, &root).unwrap().text;
        let mut writer = PackWriter::create(dir.join("pack")).unwrap();
        let d = defines("16");
        let module = CompiledModule {
            cubin: b"\x7fELF-fam-k".to_vec(),
            log: concat!(
                "ptxas info    : Compiling entry function 'k_entry' for 'sm_86'\n",
                "ptxas info    : Function properties for k_entry\n",
                "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n",
                "ptxas info    : Used 12 registers, used 0 barriers\n",
            )
            .into(),
        };
        let key = pack_key(Arch::Sm86, &d, &[], &text);
        writer
            .add(
                &key,
                Arch::Sm86,
                "fam/k.cu",
                &text,
                &d,
                "fam.k.n16",
                &module,
                0.1,
            )
            .unwrap();
        writer.finish(PackManifest::default()).unwrap();
        (root, KernelPack::open(dir.join("pack")).unwrap())
    }

    fn no_nvrtc() -> Result<Toolchain, GpuError> {
        Err(GpuError::NoNvrtc("not installed (test)".into()))
    }

    #[test]
    fn pack_only_mode_loads_from_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        let (root, pack) = tree_and_pack(dir.path());
        let compiler = Compiler::pack_only(root, pack, vec![], "test".into());
        assert!(compiler.is_pack_only() && compiler.nvrtc().is_none());
        // Define order does not matter.
        let mut reordered = defines("16");
        reordered.reverse();
        let out = compiler.compile(&SRC, &reordered, Arch::Sm86).unwrap();
        assert_eq!(out.origin, ModuleOrigin::Pack);
        assert!(out.from_cache);
        assert_eq!(out.module.cubin, b"\x7fELF-fam-k");
        assert_eq!(out.files, ["fam/k.cu", "fam/h.cuh"]);
        assert_eq!(out.functions.len(), 1);
        assert_eq!(out.functions[0].registers, 12);
        assert_eq!(
            out.key,
            compiler.pack_key(&SRC, &reordered, Arch::Sm86).unwrap()
        );
        assert!(compiler.describe().contains("kernel pack only"));
    }

    #[test]
    fn a_miss_in_pack_only_mode_names_file_defines_arch_and_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let (root, pack) = tree_and_pack(dir.path());
        let compiler = Compiler::pack_only(root, pack, vec![], "no libnvrtc.so.13".into());
        let err = compiler
            .compile(&SRC, &defines("32"), Arch::Sm86)
            .unwrap_err();
        assert!(matches!(err, GpuError::NotInPack(_)), "{err}");
        assert!(!err.is_unavailable(), "a miss is not a missing GPU stack");
        let msg = err.to_string();
        for needed in [
            "fam/k.cu",
            "DTYPE=2 N=32",
            "sm_86",
            "N=32 (pack: 16)",
            "no libnvrtc.so.13",
            "install NVRTC 13",
            "ssmk kernels pack --arch sm_86",
        ] {
            assert!(msg.contains(needed), "`{needed}` missing from: {msg}");
        }
        // Another target: the pack says which it has.
        let msg = compiler
            .compile(&SRC, &defines("16"), Arch::Sm90)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("for sm_86 but not for sm_90"), "{msg}");
        // Edited sources are a miss too, and said to be.
        std::fs::write(dir.path().join("kernels/fam/h.cuh"), "int h2;\n").unwrap();
        let msg = compiler
            .compile(&SRC, &defines("16"), Arch::Sm86)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("other kernel sources"), "{msg}");
        // The front-end check needs NVRTC.
        assert!(matches!(
            compiler.check_front_end(&SRC, &defines("16"), Arch::Sm86),
            Err(GpuError::NoNvrtc(_))
        ));
    }

    #[test]
    fn without_nvrtc_a_configured_pack_makes_a_pack_only_compiler() {
        let dir = tempfile::tempdir().unwrap();
        let (root, pack) = tree_and_pack(dir.path());
        let cache = ModuleCache::disabled();
        let c = Compiler::choose(
            root.clone(),
            cache.clone(),
            vec![],
            Some(pack),
            false,
            no_nvrtc,
        )
        .unwrap();
        assert!(c.is_pack_only());
        assert!(
            c.describe().contains("not installed (test)"),
            "{}",
            c.describe()
        );
        // Without a pack, a missing NVRTC is still the typed error it was.
        let err = Compiler::choose(root.clone(), cache.clone(), vec![], None, false, no_nvrtc)
            .unwrap_err();
        assert!(matches!(err, GpuError::NoNvrtc(_)), "{err}");
        // Pack-only mode without a pack is a configuration error.
        let err = Compiler::choose(root.clone(), cache.clone(), vec![], None, true, no_nvrtc)
            .unwrap_err();
        assert!(err.to_string().contains("SSM_KERNEL_PACK"), "{err}");
        // A broken toolchain (not a missing one) is reported, pack or not.
        let (_, pack) = tree_and_pack(dir.path());
        let broken = || Err(GpuError::Driver("nvrtcVersion crashed".into()));
        assert!(matches!(
            Compiler::choose(root, cache, vec![], Some(pack), false, broken),
            Err(GpuError::Driver(_))
        ));
    }

    #[test]
    fn with_nvrtc_the_pack_is_looked_in_first_and_a_miss_compiles() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pack) = tree_and_pack(dir.path());
        let Ok(toolchain) = Toolchain::find() else {
            eprintln!(
                "SKIPPED with_nvrtc_the_pack_is_looked_in_first: no NVRTC here (the pack-only \
                 tests above still ran)"
            );
            return;
        };
        // A real kernel, so that NVRTC can compile the miss.
        let kernels = dir.path().join("real");
        std::fs::create_dir_all(kernels.join("fam")).unwrap();
        std::fs::write(
            kernels.join("fam/k.cu"),
            "extern \"C\" __global__ void k_entry(float* x) { x[threadIdx.x] += N; }\n",
        )
        .unwrap();
        let root = SourceRoot::Disk(kernels);
        let c = Compiler::choose(
            root,
            ModuleCache::disabled(),
            vec![],
            Some(pack),
            false,
            || Ok(toolchain),
        )
        .unwrap();
        assert!(!c.is_pack_only());
        let out = c.compile(&SRC, &defines("32"), Arch::Sm86).unwrap();
        assert_eq!(out.origin, ModuleOrigin::Compiled);
        assert!(!out.module.is_ptx());
        let ptx = c.compile(&SRC, &defines("32"), Arch::Compute90).unwrap();
        assert!(ptx.module.is_ptx() && ptx.module.cubin.ends_with(&[0]));
        assert!(ptx.functions.is_empty());
    }
}
