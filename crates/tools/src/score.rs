//! `vae-ood score`: image files through the node's own monitor, one record per file.

use crate::Result;
use serde::Serialize;
use std::path::PathBuf;
use vae_ood_core::detector::Detector;
use vae_ood_core::frame::ImageFile;
use vae_ood_core::monitor::{Monitor, MonitorConfig, MonitorState};

/// One scored file.
#[derive(Debug, Clone, Serialize)]
pub struct FileScore {
    pub file: String,
    pub state: MonitorState,
    pub ood: bool,
    pub score: Option<f64>,
    /// The score as the node publishes it (`~/score` is a Float32).
    pub score_f32: Option<f32>,
    pub fault: Option<String>,
    /// KL per latent (all latents), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<Vec<f64>>,
    /// The frame's detail features, when asked for and the score uses them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Vec<f64>>,
}

/// Scores `files` in order with one monitor (the node's decoder, preprocessing and verdict),
/// handing each record to `each`. `kl_detector`, when given, adds the KL of every latent and
/// any detail features (a second detector, so the monitor's stream is left as the node would
/// have it).
pub fn score_files(
    detector: Box<dyn Detector>,
    config: MonitorConfig,
    mut kl_detector: Option<Box<dyn Detector>>,
    files: &[PathBuf],
    each: &mut dyn FnMut(FileScore),
) -> Result<()> {
    let mut monitor = Monitor::new(detector, config)?;
    let kl_stream = kl_detector.as_mut().map(|d| d.open_stream());
    for file in files {
        let image = ImageFile::read(file)?;
        let verdict = monitor.process(&image.as_frame(), None);
        let extra = match (kl_detector.as_mut(), kl_stream) {
            (Some(det), Some(stream)) => image
                .decode()
                .ok()
                .and_then(|img| det.score(stream, (&img).into()).ok()),
            _ => None,
        };
        let (kl, detail) = match extra {
            Some(s) => (Some(s.kl), Some(s.detail).filter(|d| !d.is_empty())),
            None => (None, None),
        };
        each(FileScore {
            file: file.display().to_string(),
            state: verdict.state,
            ood: verdict.is_ood(),
            score: verdict.score,
            score_f32: verdict.score.map(|s| s as f32),
            fault: verdict.fault.as_ref().map(|f| f.to_string()),
            kl,
            detail,
        });
    }
    Ok(())
}
