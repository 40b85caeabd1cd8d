//! `vae-ood bag`: a bag's topics, or a summary line per camera message.

use anyhow::Result;
use std::path::PathBuf;
use vae_ood_bag::Bag;

#[derive(clap::Args)]
pub struct Args {
    path: PathBuf,
    #[arg(long)]
    dump: Option<String>,
}

pub fn run(a: &Args) -> Result<()> {
    match &a.dump {
        None => {
            for t in Bag::open(&a.path)?.topics()? {
                println!("{}\t{}\t{}", t.name, t.msg_type, t.count);
            }
        }
        Some(topic) => vae_ood_tools::inspect::dump_camera(&a.path, topic, &mut |s| {
            println!("{}", serde_json::to_string(&s).expect("serialisable"))
        })?,
    }
    Ok(())
}
