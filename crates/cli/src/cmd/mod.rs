//! One module per subcommand: its arguments and its printing.

pub mod bag;
pub mod bench;
pub mod calibrate;
#[cfg(feature = "train")]
pub mod compress;
pub mod encode;
pub mod eval;
pub mod flow;
pub mod import;
pub mod info;
pub mod joint;
pub mod metrics;
pub mod prune;
pub mod replay;
pub mod score;
#[cfg(feature = "train")]
pub mod train;
