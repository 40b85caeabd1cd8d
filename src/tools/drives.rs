//! Image folders as drives: one folder = one drive, frames in file-name order.

use crate::frame::FrameData;
use crate::monitor::{Detector, Fault, Scored};
use image::RgbImage;
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

/// Decodes every frame of a drive, an image folder or a rosbag2 bag (its one image topic), with
/// the node's decoders, in order, and hands each to `f`. Returns the number of frames. Any
/// undecodable frame, or an error from `f`, stops the walk with an error naming the frame:
/// calibration and training data must be clean.
pub fn for_each_frame(
    path: &Path,
    f: &mut dyn FnMut(&RgbImage) -> Result<(), String>,
) -> Result<usize, String> {
    use crate::bag::{cdr, Bag};
    let mut n = 0;
    if crate::eval::is_bag(path) {
        let bag = Bag::open(path).map_err(|e| e.to_string())?;
        let (topic, msg_type) = bag.camera_topic(None).map_err(|e| e.to_string())?;
        let mut failure = None;
        bag.visit(&[topic.as_str()], &mut |m| {
            if failure.is_some() {
                return;
            }
            let done = cdr::decode_camera(&msg_type, &m.data)
                .map_err(|e| e.to_string())
                .and_then(|c| crate::frame::decode(&c.as_frame()).map_err(|e| e.to_string()))
                .and_then(|img| f(&img));
            match done {
                Ok(()) => n += 1,
                Err(e) => failure = Some(format!("{}: frame {n}: {e}", path.display())),
            }
        })
        .map_err(|e| e.to_string())?;
        return match failure {
            Some(e) => Err(e),
            None if n == 0 => Err(format!("{}: no frames on {}", path.display(), topic)),
            None => Ok(n),
        };
    }
    let files = list_images(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if files.is_empty() {
        return Err(format!("{}: no PNG or JPEG frames", path.display()));
    }
    for file in &files {
        let img = decode_file(file)?;
        f(&img).map_err(|e| format!("{}: {e}", file.display()))?;
        n += 1;
    }
    Ok(n)
}

/// `part` of every scored frame of a drive (see [`for_each_frame`]), in order.
pub fn map_drive<T>(
    det: &mut Detector,
    path: &Path,
    tick: &dyn Fn(),
    part: impl Fn(Scored) -> T,
) -> Result<Vec<T>, String> {
    let mut out = vec![];
    for_each_frame(path, &mut |img| {
        tick();
        out.push(part(det.score_image(img).map_err(|e| e.to_string())?));
        Ok(())
    })?;
    Ok(out)
}

/// Decodes an image file with the node's CompressedImage decoder (identical pixels, identical
/// scores).
pub fn decode_file(file: &Path) -> Result<RgbImage, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let format = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    crate::frame::decode(&FrameData::Compressed {
        format: &format,
        data: &bytes,
    })
    .map_err(|e| format!("{}: {e}", file.display()))
}

/// Decodes an image file and returns its KL per latent.
pub fn kl_of_file(det: &mut Detector, file: &Path) -> Result<Vec<f64>, String> {
    let img = decode_file(file)?;
    det.score_image(&img)
        .map(|s| s.kl)
        .map_err(|e: Fault| format!("{}: {e}", file.display()))
}
