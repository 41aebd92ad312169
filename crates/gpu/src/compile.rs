//! The compile pipeline shared by the GPU runtime and the offline resource
//! report: resolve includes, build options, look in the cache, run NVRTC, store.
//! Needs NVRTC and the toolkit headers, never the driver or a GPU.

use crate::cache::{cache_key, ModuleCache};
use crate::nvrtc::{
    check_syntax, compile_cubin, compile_options, extra_flags_from_env, Arch, CompiledModule,
};
use crate::ptxas::{parse_log, PtxasFunction};
use crate::source::{resolve, SourceRoot};
use crate::toolkit::{cuda_include_dir, nvrtc, IncludeDir, NvrtcInfo};
use crate::{GpuError, KernelSource};

/// Everything a compile depends on besides the source and its defines.
#[derive(Clone, Debug)]
pub struct Compiler {
    root: SourceRoot,
    include: IncludeDir,
    nvrtc: &'static NvrtcInfo,
    cache: ModuleCache,
    extra_flags: Vec<String>,
}

/// One compiled translation unit and what we know about it.
#[derive(Clone, Debug)]
pub struct CompileOutput {
    pub module: CompiledModule,
    /// The cache key (hex sha256 of source, options and NVRTC version).
    pub key: String,
    pub from_cache: bool,
    /// Every kernel file that went into it, main file first.
    pub files: Vec<String>,
    /// ptxas's report of every function in it.
    pub functions: Vec<PtxasFunction>,
}

impl Compiler {
    /// Sources from `SSM_KERNEL_DIR` or the embedded copies, the cache from
    /// `SSM_KERNEL_CACHE`, extra flags from `SSM_NVRTC_FLAGS`.
    pub fn from_env() -> Result<Self, GpuError> {
        Self::new(
            SourceRoot::from_env(),
            ModuleCache::from_env(),
            extra_flags_from_env(),
        )
    }

    /// Fails with `NoNvrtc` or `NoToolkitHeaders` when either is missing.
    pub fn new(
        root: SourceRoot,
        cache: ModuleCache,
        extra_flags: Vec<String>,
    ) -> Result<Self, GpuError> {
        let nvrtc = nvrtc()?;
        let include = cuda_include_dir()?;
        Ok(Compiler {
            root,
            include,
            nvrtc,
            cache,
            extra_flags,
        })
    }

    pub fn source_root(&self) -> &SourceRoot {
        &self.root
    }
    pub fn include_dir(&self) -> &IncludeDir {
        &self.include
    }
    pub fn nvrtc(&self) -> &NvrtcInfo {
        self.nvrtc
    }
    pub fn cache(&self) -> &ModuleCache {
        &self.cache
    }
    pub fn extra_flags(&self) -> &[String] {
        &self.extra_flags
    }

    /// One line saying where sources, headers, NVRTC and the cache come from.
    pub fn describe(&self) -> String {
        format!(
            "NVRTC {} from {}; CUDA headers {} ({}); kernel sources {}; cache {}",
            self.nvrtc.version_string(),
            self.nvrtc.location,
            self.include.path.display(),
            self.include.origin,
            self.root.describe(),
            self.cache
                .dir()
                .map_or("off".to_string(), |d| d.display().to_string()),
        )
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
        let resolved = resolve(src, &self.root)?;
        let options = compile_options(arch, &self.include.path, defines, &self.extra_flags)?;
        check_syntax(&resolved.main, &resolved.text, &options)
    }

    /// Compile `src` with `defines` for `arch`, through the cache.
    pub fn compile(
        &self,
        src: &KernelSource,
        defines: &[(&str, String)],
        arch: Arch,
    ) -> Result<CompileOutput, GpuError> {
        let resolved = resolve(src, &self.root)?;
        let options = compile_options(arch, &self.include.path, defines, &self.extra_flags)?;
        let key = cache_key(&resolved.text, &options, self.nvrtc.version);
        let (module, from_cache) = match self.cache.load(&key) {
            Some(module) => (module, true),
            None => {
                let module = compile_cubin(&resolved.main, &resolved.text, &options)?;
                if let Err(e) = self.cache.store(&key, &module) {
                    // A read-only cache costs compile time, not correctness.
                    eprintln!("ssm-gpu: warning: not caching {}: {e}", resolved.main);
                }
                (module, false)
            }
        };
        let functions = parse_log(&module.log);
        Ok(CompileOutput {
            module,
            key,
            from_cache,
            files: resolved.files,
            functions,
        })
    }
}
