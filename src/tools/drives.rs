//! Image folders as drives: one folder = one drive, frames in file-name order.

use crate::frame::FrameData;
use crate::monitor::{Detector, Fault};
use std::path::{Path, PathBuf};

/// PNG/JPEG files of a folder, sorted by name; a file is returned as is.
pub fn list_images(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| {
            matches!(
                f.extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("png" | "jpg" | "jpeg")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// KL per latent of every frame of a drive: an image folder, or a rosbag2 bag (its one image
/// topic). Any unreadable frame is an error naming it: calibration data must be clean.
pub fn kl_of_drive(
    det: &mut Detector,
    path: &Path,
    tick: &dyn Fn(),
) -> Result<Vec<Vec<f64>>, String> {
    use crate::bag::{cdr, Bag};
    if crate::eval::is_bag(path) {
        let bag = Bag::open(path).map_err(|e| e.to_string())?;
        let (topic, msg_type) = bag.camera_topic(None).map_err(|e| e.to_string())?;
        let mut out = vec![];
        let mut failure = None;
        bag.visit(&[topic.as_str()], &mut |m| {
            if failure.is_some() {
                return;
            }
            let frame = cdr::decode_camera(&msg_type, &m.data);
            let kl = frame
                .map_err(|e| e.to_string())
                .and_then(|f| crate::frame::decode(&f.as_frame()).map_err(|e| e.to_string()))
                .and_then(|img| {
                    det.score_image(&img)
                        .map(|s| s.kl)
                        .map_err(|e| e.to_string())
                });
            match kl {
                Ok(kl) => out.push(kl),
                Err(e) => failure = Some(format!("{}: frame {}: {e}", path.display(), out.len())),
            }
            tick();
        })
        .map_err(|e| e.to_string())?;
        return match failure {
            Some(e) => Err(e),
            None if out.is_empty() => Err(format!("{}: no frames on {}", path.display(), topic)),
            None => Ok(out),
        };
    }
    let files = list_images(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if files.is_empty() {
        return Err(format!("{}: no PNG or JPEG frames", path.display()));
    }
    files
        .iter()
        .map(|f| {
            tick();
            kl_of_file(det, f)
        })
        .collect()
}

/// Decodes an image file with the node's CompressedImage decoder (identical pixels, identical
/// scores) and returns its KL per latent.
pub fn kl_of_file(det: &mut Detector, file: &Path) -> Result<Vec<f64>, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let format = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let img = crate::frame::decode(&FrameData::Compressed {
        format: &format,
        data: &bytes,
    })
    .map_err(|e| format!("{}: {e}", file.display()))?;
    det.score_image(&img)
        .map(|s| s.kl)
        .map_err(|e: Fault| format!("{}: {e}", file.display()))
}
