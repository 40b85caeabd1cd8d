//! Empty on purpose: cargo only resolves a package's `[build-dependencies]` when it has a build
//! script, and the core's build-dependencies are feature pins (see Cargo.toml) that keep tract
//! compiled once for the tests, the tools and the ROS package.
fn main() {}
