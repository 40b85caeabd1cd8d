//! The command gate node. See `vae_ood_monitor::ros::gate` and config/gate.yaml.
fn main() -> anyhow::Result<()> {
    vae_ood_monitor::ros::gate::main()
}
