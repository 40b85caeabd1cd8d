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
