//! The ROS 2 layer (feature `ros`): a thin r2r node over the core [`crate::monitor::Monitor`].

pub mod gate;
pub mod inference;
pub mod messages;
pub mod node;
pub mod params;
pub mod replay;
