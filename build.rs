//! Build script: only matters for the ROS layer (`--features ros`) on ROS 2 installed from
//! PyPI wheels. Their librcl pulls in Python extension modules that do not declare libpython,
//! so the node must link it itself or it fails at start-up with
//! `undefined symbol: PyExc_RuntimeError`. scripts/env.sh sets VAE_OOD_LINK_PYTHON to the
//! directory holding libpython3.11; with a regular ROS install it is unset and nothing happens.
fn main() {
    println!("cargo:rerun-if-env-changed=VAE_OOD_LINK_PYTHON");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_ROS").is_none() {
        return;
    }
    if let Some(dir) = std::env::var_os("VAE_OOD_LINK_PYTHON").filter(|d| !d.is_empty()) {
        let dir = dir.to_string_lossy();
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-lpython3.11");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
