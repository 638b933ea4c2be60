//! Embeds an rpath to libtorch so `target/*/robustd` runs without LD_LIBRARY_PATH.
//!
//! torch-sys (our direct dependency for exactly this reason) publishes the libtorch library directory it linked
//! against as `DEP_TCH_LIBTORCH_LIB`. With `LIBTORCH_USE_PYTORCH=1` that is the project venv's
//! `site-packages/torch/lib`, which also holds the CUDA runtime libraries' loader paths.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=ROBUSTD_LIBTORCH_LIB={dir}");
    }
}
