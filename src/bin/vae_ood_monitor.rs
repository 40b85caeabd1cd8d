//! The ROS 2 monitor node. See `vae_ood_monitor::node` and config/monitor.yaml.
#[cfg(feature = "ros")]
fn main() -> anyhow::Result<()> {
    vae_ood_monitor::node::main()
}

#[cfg(not(feature = "ros"))]
fn main() {
    eprintln!("vae_ood_monitor was built without the `ros` feature: rebuild it in a ROS 2 environment (source scripts/env.sh; cargo build -p vae_ood_monitor)");
    std::process::exit(1);
}
