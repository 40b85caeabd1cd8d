//! The compression report's plots and HTML page (the numbers are in report.json).

use super::sweep::{Report, Row};
use crate::plots::{line_chart, scatter_chart};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

fn mean(m: &BTreeMap<String, f64>) -> f64 {
    m.values().sum::<f64>() / m.len().max(1) as f64
}

/// Per-layer series (fraction, y) of the single-layer structured candidates, the teacher at 0.
fn per_layer(report: &Report, y: &dyn Fn(&Row) -> Option<f64>) -> Vec<(String, Vec<(f64, f64)>)> {
    let teacher = report.rows.first().and_then(y);
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &report.rows {
        let s = &r.result.spec;
        if s.structured.len() == 1 && !s.finetune && s.precision.is_none() && s.sparsity.is_none() {
            let (layer, f) = &s.structured[0];
            if let Some(v) = y(r) {
                series
                    .entry(layer.clone())
                    .or_insert_with(|| teacher.map(|t| vec![(0.0, t)]).unwrap_or_default())
                    .push((*f, v));
            }
        }
    }
    series.into_iter().collect()
}

/// Series in the form the chart functions take.
fn named<'a>(
    m: impl IntoIterator<Item = (&'a String, &'a Vec<(f64, f64)>)>,
) -> Vec<(&'a str, Vec<(f64, f64)>)> {
    m.into_iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect()
}

/// Draws one chart into the given file.
type Draw<'a> = dyn Fn(&Path) -> Result<(), crate::Error> + 'a;

/// Writes the plots to `out`; returns their file names.
pub fn plots(report: &Report, out: &Path) -> Result<Vec<String>, crate::Error> {
    crate::plots::font()?;
    let per_fraction = "fraction of units removed";
    let auroc = per_layer(report, &|r| Some(mean(&r.result.auroc_cusum)));
    let loss = per_layer(report, &|r| r.result.heldout_loss);
    let (mut by_tech, mut all) = (BTreeMap::new(), BTreeMap::new());
    let mut front = vec![];
    for r in &report.rows {
        let (tech, a) = (r.result.spec.technique.clone(), mean(&r.result.auroc_cusum));
        if let Some(l) = r.result.heldout_loss {
            by_tech
                .entry(tech.clone())
                .or_insert_with(Vec::new)
                .push((l, a));
        }
        all.entry(tech).or_insert_with(Vec::new).push((r.p50_ms, a));
        if r.pareto {
            front.push((r.p50_ms, a));
        }
    }
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    let charts: [(&str, &Draw); 4] = [
        ("sensitivity_auroc.png", &|p| {
            let labels = (
                "Structured pruning: mean CUSUM AUROC",
                per_fraction,
                "AUROC",
            );
            line_chart(p, labels, &named(auroc.iter().map(|(n, v)| (n, v))))
        }),
        ("sensitivity_loss.png", &|p| {
            let labels = (
                "Structured pruning: held-out loss",
                per_fraction,
                "BCE + beta KL per frame",
            );
            line_chart(p, labels, &named(loss.iter().map(|(n, v)| (n, v))))
        }),
        ("loss_vs_auroc.png", &|p| {
            let labels = (
                "Held-out loss vs AUROC by technique",
                "held-out loss",
                "mean CUSUM AUROC",
            );
            scatter_chart(p, labels, &named(&by_tech), None)
        }),
        ("pareto.png", &|p| {
            let labels = (
                "AUROC vs encoder latency (line: Pareto front)",
                "encoder p50 ms",
                "mean CUSUM AUROC",
            );
            scatter_chart(p, labels, &named(&all), Some(&front))
        }),
    ];
    let mut written = vec![];
    for (name, draw) in charts {
        draw(&out.join(name))?;
        written.push(name.to_string());
    }
    Ok(written)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// One HTML page: summary, candidates table, per-layer costs, plots.
pub fn html(r: &Report) -> String {
    let mut h = String::from("<!doctype html><meta charset=utf-8><title>vae-ood compress</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}tr.sel{background:#dfd}</style>");
    let _ = write!(h, "<h1>Compression report</h1><p>Teacher {}; budget {:?}; AUROC budget {} (CUSUM, every partition); deadline {} ms; latency from one interleaved run of {} frames per encoder.</p>", esc(&r.teacher.display().to_string()), r.budget, r.auroc_drop, r.deadline_ms, r.bench_frames);
    let _ = write!(
        h,
        "<p><b>Selected: {}</b></p>",
        esc(r
            .selected
            .as_deref()
            .unwrap_or("none (no candidate within the budget)"))
    );
    let parts: Vec<String> = r
        .rows
        .first()
        .map(|t| t.result.auroc_cusum.keys().cloned().collect())
        .unwrap_or_default();
    let _ = write!(h, "<h2>Candidates</h2><table><tr><th>candidate</th><th>technique</th><th>params</th><th>MACs</th><th>ONNX KiB</th><th>p50 ms</th><th>p99 ms</th><th>speed-up</th>");
    for p in &parts {
        let _ = write!(h, "<th>CUSUM {}</th><th>score {}</th>", esc(p), esc(p));
    }
    let _ = write!(h, "<th>held-out loss</th><th>posterior dist.</th><th>peak MiB</th><th>Pareto</th><th>verdict</th></tr>");
    for row in &r.rows {
        let c = &row.result;
        let sel = r.selected.as_deref() == Some(c.spec.name.as_str());
        let _ = write!(h, "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.3}</td><td>{:.3}</td><td>{:.2}x</td>", if sel { " class=sel" } else { "" }, esc(&c.spec.name), esc(&c.spec.technique), c.params, c.macs, c.onnx_bytes as f64 / 1024.0, row.p50_ms, row.p99_ms, row.speedup);
        for p in &parts {
            let _ = write!(
                h,
                "<td>{}</td><td>{}</td>",
                opt(c.auroc_cusum.get(p).copied(), 3),
                opt(c.auroc_score.get(p).copied(), 3)
            );
        }
        let _ = write!(
            h,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            opt(c.heldout_loss, 1),
            opt(c.posterior_distance, 4),
            opt(c.peak_memory_mib, 1),
            if row.pareto { "yes" } else { "" },
            esc(&row.verdict)
        );
    }
    // Where the arithmetic and the parameters are: per layer, MACs / parameters.
    h.push_str(
        "</table><h2>Multiply-accumulates / parameters per layer</h2><table><tr><th>candidate</th>",
    );
    for l in r.rows.iter().take(1).flat_map(|t| &t.layers) {
        let _ = write!(h, "<th>{}</th>", esc(&l.name));
    }
    h.push_str("</tr>");
    for row in &r.rows {
        let _ = write!(h, "<tr><td>{}</td>", esc(&row.result.spec.name));
        for l in &row.layers {
            let _ = write!(h, "<td>{} / {}</td>", l.macs, l.params);
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    for p in &r.plots {
        let _ = write!(h, "<p><img src=\"{}\"></p>", esc(p));
    }
    h
}
