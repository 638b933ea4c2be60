//! Embeds an rpath to libtorch so `target/*/robustd` runs without LD_LIBRARY_PATH, and compiles `native/ops.cpp`
//! (libtorch ops tch does not bind with all their arguments) against the same libtorch.
//!
//! torch-sys (our direct dependency for exactly this reason) publishes the libtorch library directory it linked
//! against as `DEP_TCH_LIBTORCH_LIB`. With `LIBTORCH_USE_PYTORCH=1` that is the project venv's
//! `site-packages/torch/lib`, which also holds the CUDA runtime libraries' loader paths; the headers are beside it
//! in `include/`. The C++ is built with the flags torch-sys builds its own wrapper with (C++17, the C++11 ABI
//! libtorch's wheels use unless `LIBTORCH_CXX11_ABI` says otherwise).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=native/ops.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let dir = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not publish DEP_TCH_LIBTORCH_LIB (the libtorch it links); robustd builds on Linux");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    println!("cargo:rustc-env=ROBUSTD_LIBTORCH_LIB={dir}");
    let include = Path::new(&dir)
        .parent()
        .expect("the libtorch library directory has a parent")
        .join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .file("native/ops.cpp")
        .compile("robustd_native");
}
