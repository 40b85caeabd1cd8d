//! The ROS 2 monitor node. See `vae_ood_monitor::ros::node` and config/monitor.yaml.
fn main() -> anyhow::Result<()> {
    vae_ood_monitor::ros::node::main()
}
