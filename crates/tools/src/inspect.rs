//! `vae-ood bag --dump`: what each camera message of a bag holds, for comparing bags and
//! checking a recorder.

use crate::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use vae_ood_bag::{cdr, Bag};

/// One decoded camera message: stamp, frame id, geometry, and the SHA-256 of its pixels.
#[derive(Debug, Clone, Serialize)]
pub struct FrameSummary {
    pub log_time_ns: i64,
    pub stamp_ns: i64,
    pub frame_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_bigendian: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    pub sha256: String,
}

/// Hands a summary of every message on camera `topic` to `each`, in order. An undecodable
/// message ends the dump with an error after the messages before it.
pub fn dump_camera(path: &Path, topic: &str, each: &mut dyn FnMut(FrameSummary)) -> Result<()> {
    let bag = Bag::open(path)?;
    let (_, ty) = bag.camera_topic(Some(topic))?;
    let mut failure = None;
    bag.visit(&[topic], &mut |m| {
        if failure.is_some() {
            return;
        }
        match cdr::decode_camera(&ty, &m.data) {
            Ok(f) => {
                let mut s = FrameSummary {
                    log_time_ns: m.log_time_ns,
                    stamp_ns: f.stamp_ns,
                    frame_id: f.frame_id.clone(),
                    width: None,
                    height: None,
                    encoding: None,
                    is_bigendian: None,
                    step: None,
                    format: None,
                    sha256: String::new(),
                };
                match &f.image {
                    cdr::OwnedImage::Raw {
                        width,
                        height,
                        encoding,
                        is_bigendian,
                        step,
                        data,
                    } => {
                        s.width = Some(*width);
                        s.height = Some(*height);
                        s.encoding = Some(encoding.clone());
                        s.is_bigendian = Some(*is_bigendian);
                        s.step = Some(*step);
                        s.sha256 = format!("{:x}", Sha256::digest(data));
                    }
                    cdr::OwnedImage::Compressed { format, data } => {
                        s.format = Some(format.clone());
                        s.sha256 = format!("{:x}", Sha256::digest(data));
                    }
                }
                each(s);
            }
            Err(e) => failure = Some(e.to_string()),
        }
    })?;
    match failure {
        Some(e) => Err(Error::Drive(format!("undecodable message on {topic}: {e}"))),
        None => Ok(()),
    }
}
