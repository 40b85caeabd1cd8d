//! Recorded drives, frame by frame: an image folder (one folder = one drive, frames in
//! file-name order) or a rosbag2 bag (its one camera topic), decoded with the node's decoders.

use crate::{Error, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};
use vae_ood_bag::{cdr, is_bag, Bag};
use vae_ood_core::detector::{Detector, Fault, Scored};
use vae_ood_core::frame::read_image_file;

/// PNG/JPEG files of a folder, sorted by name; a file is returned as is. The one place a
/// folder becomes a list of frames.
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

/// The image files of several paths (folders or files), in order; an error when none.
pub fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(list_images(p).map_err(Error::read(p))?);
    }
    if out.is_empty() {
        return Err(Error::Input(format!(
            "no PNG or JPEG images found in {paths:?}"
        )));
    }
    Ok(out)
}

/// The median interval between a drive's frames (ns), from a bag's header stamps; an image
/// folder's frames carry none, so it is that of `folder_fps`. `None` for a bag whose stamps
/// never advance.
pub fn frame_interval_ns(path: &Path, folder_fps: f64) -> Result<Option<i64>> {
    if !is_bag(path) {
        return Ok(Some((1e9 / folder_fps).round() as i64));
    }
    let bag = Bag::open(path)?;
    let (topic, msg_type) = bag.camera_topic(None)?;
    let mut stamps = vec![];
    bag.visit(&[topic.as_str()], &mut |m| {
        if let Ok(c) = cdr::decode_camera(&msg_type, &m.data) {
            stamps.push(c.stamp_ns);
        }
    })?;
    let mut steps: Vec<i64> = stamps
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > 0)
        .collect();
    steps.sort_unstable();
    Ok(steps.get(steps.len() / 2).copied())
}

/// Decodes every frame of a drive, an image folder or a rosbag2 bag (its one image topic), with
/// the node's decoders, in order, and hands each to `f`. Returns the number of frames. Any
/// undecodable frame, or an error from `f`, stops the walk with an error naming the frame:
/// calibration and training data must be clean.
pub fn for_each_frame(path: &Path, f: &mut dyn FnMut(&RgbImage) -> Result<()>) -> Result<usize> {
    let mut n = 0;
    if is_bag(path) {
        let bag = Bag::open(path)?;
        let (topic, msg_type) = bag.camera_topic(None)?;
        let mut failure = None;
        bag.visit(&[topic.as_str()], &mut |m| {
            if failure.is_some() {
                return;
            }
            let done = cdr::decode_camera(&msg_type, &m.data)
                .map_err(|e| e.to_string())
                .and_then(|c| vae_ood_core::frame::decode(&c.as_frame()).map_err(|e| e.to_string()))
                .and_then(|img| f(&img).map_err(|e| e.to_string()));
            match done {
                Ok(()) => n += 1,
                Err(e) => failure = Some(format!("{}: frame {n}: {e}", path.display())),
            }
        })?;
        return match failure {
            Some(e) => Err(Error::Drive(e)),
            None if n == 0 => Err(Error::Drive(format!(
                "{}: no frames on {}",
                path.display(),
                topic
            ))),
            None => Ok(n),
        };
    }
    let files = list_images(path).map_err(Error::read(path))?;
    if files.is_empty() {
        return Err(Error::Drive(format!(
            "{}: no PNG or JPEG frames",
            path.display()
        )));
    }
    for file in &files {
        let img = read_image_file(file)?;
        f(&img).map_err(|e| Error::Drive(format!("{}: {e}", file.display())))?;
        n += 1;
    }
    Ok(n)
}

/// A drive's scored frames: `part` of each, in order, from frame `first` on (the frames before
/// it warmed up a detector with history; 0 for the image detector).
#[derive(Debug, Clone)]
pub struct DriveFrames<T> {
    pub first: usize,
    pub frames: Vec<T>,
}

/// `part` of every scored frame of a drive (see [`for_each_frame`]), in order, as one stream
/// of the detector. Frames are consecutive, so only the first few can be warming up.
pub fn map_drive<T>(
    det: &mut dyn Detector,
    path: &Path,
    tick: &dyn Fn(),
    part: impl Fn(Scored) -> T,
) -> Result<DriveFrames<T>> {
    let stream = det.open_stream();
    let mut out = DriveFrames {
        first: 0,
        frames: vec![],
    };
    for_each_frame(path, &mut |img| {
        tick();
        match det.score(stream, img.into()) {
            Err(Fault::WarmingUp { .. }) if out.frames.is_empty() => out.first += 1,
            Err(e) => return Err(Error::Drive(format!("{}: {e}", path.display()))),
            Ok(s) => out.frames.push(part(s)),
        }
        Ok(())
    })?;
    Ok(out)
}

/// Frames of one drive, without decoding any: an image folder's files, a bag's messages on
/// its camera topic (or `topic`), as its index records them.
pub fn frames_in(path: &Path, topic: Option<&str>) -> Result<usize> {
    if !is_bag(path) {
        return list_images(path)
            .map(|f| f.len())
            .map_err(Error::read(path));
    }
    let topics = Bag::open(path)
        .and_then(|b| b.topics())
        .map_err(|e| Error::Drive(format!("{}: {e}", path.display())))?;
    Ok(topics
        .iter()
        .filter(|t| topic.map_or(t.is_camera(), |n| t.name == n))
        .map(|t| t.count as usize)
        .sum())
}

/// Total frames of drives (for a progress bar); unreadable drives count zero.
pub fn count_frames(paths: &[&Path], topic: Option<&str>) -> usize {
    paths.iter().map(|p| frames_in(p, topic).unwrap_or(0)).sum()
}
