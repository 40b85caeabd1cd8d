//! PNG plots for the evaluation report (plotters, bitmap backend): ROC curves per OOD type,
//! and per input the score, CUSUM and verdict over time with the OOD labels shaded.

use crate::eval::metrics::roc_points;
use crate::eval::FrameRecord;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;
use vae_ood_core::monitor::MonitorState;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a TTF for plot text once (`VAE_OOD_FONT` or DejaVu Sans from the system).
pub fn font() -> Result<(), crate::Error> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var("VAE_OOD_FONT").ok();
        let path = env.iter().map(String::as_str).chain(FONT_PATHS.iter().copied()).find(|p| Path::new(p).is_file()).ok_or_else(|| {
            format!("no TTF font for plot text (looked for {FONT_PATHS:?}); install fonts-dejavu-core or set VAE_OOD_FONT")
        })?;
        let bytes: &'static [u8] = Box::leak(std::fs::read(path).map_err(|e| format!("{path}: {e}"))?.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| format!("{path}: not a usable font"))
    })
    .clone()
    .map_err(crate::Error::Plot)
}

fn save(
    path: &Path,
    w: u32,
    h: u32,
    draw: impl FnOnce(
        DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    ) -> Result<(), crate::Error>,
) -> Result<(), crate::Error> {
    font()?;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        draw(root.clone())?;
        root.present()
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
    }
    image::RgbImage::from_raw(w, h, buf)
        .expect("buffer sized w x h")
        .save(path)
        .map_err(|e| crate::Error::Plot(format!("{}: {e}", path.display())))
}

/// Axes of an x-y chart, as `(title, x description, y description)`.
pub type Labels<'a> = (&'a str, &'a str, &'a str);

type XyChart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draws an x-y chart over the given ranges: caption, mesh, the series `draw` adds, legend.
fn xy_chart(
    path: &Path,
    labels: Labels,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    draw: impl FnOnce(&mut XyChart) -> Result<(), crate::Error>,
) -> Result<(), crate::Error> {
    let (title, x_desc, y_desc) = labels;
    save(path, 640, 420, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x, y)
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        draw(&mut chart)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| crate::Error::Plot(e.to_string()))
    })
}

/// The (min, max) of `v` padded by 5 % (by 1 when flat), or `fallback` when `v` is empty.
fn padded(v: impl Iterator<Item = f64>, fallback: std::ops::Range<f64>) -> std::ops::Range<f64> {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if lo.is_finite() && hi > lo {
        let pad = 0.05 * (hi - lo);
        (lo - pad)..(hi + pad)
    } else if lo.is_finite() {
        (lo - 1.0)..(hi + 1.0)
    } else {
        fallback
    }
}

/// A line chart of named series (x, y): x from 0, y axis fitted to the data.
pub fn line_chart(
    path: &Path,
    labels: Labels,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), crate::Error> {
    let points = || series.iter().flat_map(|(_, s)| s.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let y = padded(points().map(|p| p.1), 0.0..1.0);
    xy_chart(path, labels, 0f64..x_max, y, |chart| {
        for (i, (name, s)) in series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(2)))
                .map_err(|e| crate::Error::Plot(e.to_string()))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
        }
        Ok(())
    })
}

/// A scatter chart of named point sets, both axes fitted to the data, with an optional line
/// through `line` (a Pareto front, say).
pub fn scatter_chart(
    path: &Path,
    labels: Labels,
    series: &[(&str, Vec<(f64, f64)>)],
    line: Option<&[(f64, f64)]>,
) -> Result<(), crate::Error> {
    let points = || series.iter().flat_map(|(_, s)| s.iter());
    let x = padded(points().map(|p| p.0), 0.0..1.0);
    let y = padded(points().map(|p| p.1), 0.0..1.0);
    xy_chart(path, labels, x, y, |chart| {
        if let Some(l) = line {
            chart
                .draw_series(LineSeries::new(l.iter().copied(), BLACK.stroke_width(1)))
                .map_err(|e| crate::Error::Plot(e.to_string()))?;
        }
        for (i, (name, s)) in series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(s.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(|e| crate::Error::Plot(e.to_string()))?
                .label(*name)
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
        }
        Ok(())
    })
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// ROC curves of `value` (score or CUSUM), one per OOD type against all ID frames.
pub fn roc(
    path: &Path,
    title: &str,
    frames: &[FrameRecord],
    value: fn(&FrameRecord) -> Option<f64>,
) -> Result<(), crate::Error> {
    let types = crate::eval::ood_types(frames);
    save(path, 640, 520, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("false positive rate (ID flagged)")
            .y_desc("true positive rate (OOD flagged)")
            .draw()
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                RGBColor(180, 180, 180),
            ))
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        for (k, t) in types.iter().enumerate() {
            let (s, l): (Vec<f64>, Vec<bool>) = frames
                .iter()
                .filter(|f| !f.ood || &f.ood_type == t)
                .filter_map(|f| value(f).map(|v| (v, f.ood)))
                .unzip();
            if !l.iter().any(|&b| b) || l.iter().all(|&b| b) {
                continue;
            }
            let c = COLOURS[k % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(roc_points(&s, &l), c.stroke_width(2)))
                .map_err(|e| crate::Error::Plot(e.to_string()))?
                .label(t.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| crate::Error::Plot(e.to_string()))
    })
}

/// One input over time: score (top) and CUSUM S or the verdict (bottom); OOD-labelled frames
/// shaded, frames with an OOD verdict marked.
pub fn timeline(
    path: &Path,
    title: &str,
    frames: &[&FrameRecord],
    cusum_threshold: Option<f64>,
) -> Result<(), crate::Error> {
    let n = frames.len().max(1) as f64;
    save(path, 900, 520, |root| {
        let (top, bottom) = root.split_vertically(280);
        let max_score = frames.iter().filter_map(|f| f.score).fold(1e-9, f64::max) * 1.1;
        let shade = |chart: &mut ChartContext<
            '_,
            BitMapBackend<'_>,
            Cartesian2d<
                plotters::coord::types::RangedCoordf64,
                plotters::coord::types::RangedCoordf64,
            >,
        >,
                     ymax: f64| {
            chart
                .draw_series(
                    frames
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| f.ood)
                        .map(|(i, _)| {
                            Rectangle::new(
                                [(i as f64, 0.0), (i as f64 + 1.0, ymax)],
                                RGBColor(255, 200, 200).filled(),
                            )
                        }),
                )
                .map(|_| ())
                .map_err(|e| crate::Error::Plot(e.to_string()))
        };
        let mut c = ChartBuilder::on(&top)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(20)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n, 0f64..max_score)
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        c.configure_mesh()
            .y_desc("score (KL)")
            .draw()
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        shade(&mut c, max_score)?;
        c.draw_series(LineSeries::new(
            frames
                .iter()
                .enumerate()
                .filter_map(|(i, f)| f.score.map(|s| (i as f64 + 0.5, s))),
            COLOURS[0].stroke_width(2),
        ))
        .map_err(|e| crate::Error::Plot(e.to_string()))?;
        c.draw_series(
            frames
                .iter()
                .enumerate()
                .filter(|(_, f)| f.state == MonitorState::Ood)
                .map(|(i, _)| {
                    Circle::new((i as f64 + 0.5, max_score * 0.97), 2, COLOURS[3].filled())
                }),
        )
        .map_err(|e| crate::Error::Plot(e.to_string()))?;

        let (label, values): (&str, Vec<f64>) = match cusum_threshold {
            Some(_) => (
                "CUSUM S",
                frames.iter().map(|f| f.cusum.unwrap_or(0.0)).collect(),
            ),
            None => (
                "verdict OOD",
                frames
                    .iter()
                    .map(|f| f64::from(u8::from(f.state.is_ood())))
                    .collect(),
            ),
        };
        let ymax = values
            .iter()
            .copied()
            .chain(cusum_threshold)
            .fold(1e-9, f64::max)
            * 1.1;
        let mut c = ChartBuilder::on(&bottom)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n, 0f64..ymax)
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        c.configure_mesh()
            .x_desc("frame (shaded: labelled OOD; red dots: OOD verdict)")
            .y_desc(label)
            .draw()
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        shade(&mut c, ymax)?;
        c.draw_series(LineSeries::new(
            values.iter().enumerate().map(|(i, v)| (i as f64 + 0.5, *v)),
            COLOURS[1].stroke_width(2),
        ))
        .map_err(|e| crate::Error::Plot(e.to_string()))?;
        if let Some(t) = cusum_threshold {
            c.draw_series(LineSeries::new(
                [(0.0, t), (n, t)],
                COLOURS[3].stroke_width(1),
            ))
            .map_err(|e| crate::Error::Plot(e.to_string()))?;
        }
        Ok(())
    })
}
