//! The kernels of this checkout, for the tests that compile them with NVRTC.

use std::path::PathBuf;

use ssm_gpu::{test_compiler_or_skip, Compiler, SourceRoot};

/// The kernels directory of this checkout (not the embedded copies: the tests
/// must see the files as they are now).
pub fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kernels")
}

/// The environment's compiler (cache and extra flags) over [`kernels_dir`], or
/// `None` where `test_compiler_or_skip` skips `test_name`.
pub fn checkout_compiler_or_skip(test_name: &str) -> Option<Compiler> {
    let from_env = test_compiler_or_skip(test_name)?;
    let compiler = Compiler::new(
        SourceRoot::Disk(kernels_dir()),
        from_env.cache().clone(),
        from_env.extra_flags().to_vec(),
    )
    .unwrap();
    Some(compiler)
}
