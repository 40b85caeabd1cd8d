//! The command gate node. See `vae_ood_monitor::gate` and config/gate.yaml.
#[cfg(feature = "ros")]
fn main() -> anyhow::Result<()> {
    vae_ood_monitor::gate::main()
}

#[cfg(not(feature = "ros"))]
fn main() {
    eprintln!("ood_gate was built without the `ros` feature: rebuild it in a ROS 2 environment (source scripts/env.sh; cargo build -p vae_ood_monitor)");
    std::process::exit(1);
}
