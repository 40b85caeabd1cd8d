//! A one-page HTML report linking the plots, with the numbers of report.json in tables.

use super::report::{Outcome, Report};
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn metrics_table(
    out: &mut String,
    title: &str,
    table: &std::collections::BTreeMap<String, Outcome>,
) {
    if table.is_empty() {
        return;
    }
    let _ = write!(out, "<h2>{}</h2><table><tr><th>OOD type</th><th>AUROC</th><th>AUPR-in</th><th>AUPR-out</th><th>FPR@95TPR</th><th>OOD frames</th><th>ID frames</th></tr>", esc(title));
    for (ty, o) in table {
        match o {
            Outcome::Ok(m) => {
                let _ = write!(out, "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td><td>{}</td></tr>", esc(ty), m.auroc, m.aupr_in, m.aupr_out, m.fpr_at_95_tpr, m.n_ood, m.n_id);
            }
            Outcome::Unavailable { error } => {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td colspan=6>{}</td></tr>",
                    esc(ty),
                    esc(error)
                );
            }
        }
    }
    out.push_str("</table>");
}

pub fn render(r: &Report) -> String {
    let mut h = String::from("<!doctype html><html><head><meta charset=utf-8><title>vae_ood_monitor evaluation</title><style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}.warn{color:#b00}img{max-width:100%;border:1px solid #eee}</style></head><body>");
    let _ = write!(h, "<h1>Evaluation of {}</h1>", esc(&r.model_id));
    if r.partial {
        h.push_str("<p class=warn><b>Partial result:</b> some inputs were damaged; frames before the damage are included.</p>");
    }
    let _ = write!(h, "<p>{} frames ({} scored, {} faulted, {} warming up), {:.1} frames/s, peak memory {:.0} MiB. Calibrated: {}. Machine-readable: <a href=report.json>report.json</a>, <a href=frames.csv>frames.csv</a>.</p>", r.frames, r.scored, r.faulted, r.warming_up, r.throughput_fps, r.peak_memory_mib.unwrap_or(f64::NAN), r.calibrated);
    h.push_str("<h2>Inputs</h2><table><tr><th>input</th><th>frames</th><th>error</th></tr>");
    for i in &r.inputs {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=warn>{}</td></tr>",
            esc(&i.path),
            i.frames,
            esc(i.error.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table>");
    metrics_table(&mut h, "Per-frame score (OOD positive)", &r.score_metrics);
    metrics_table(&mut h, "CUSUM statistic (OOD positive)", &r.cusum_metrics);
    if let Some(s) = &r.sequential {
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.2}"));
        let _ = write!(h, "<h2>Sequential verdict</h2><p>{} OOD segment(s): {} detected, {} missed; mean delay {} frames ({} s). {} false alarm(s) in {} ID frames: {:.2} per 1000 frames, {} per hour.</p>", s.segments.len(), s.detected, s.missed, opt(s.mean_delay_frames), opt(s.mean_delay_s), s.false_alarms, s.id_frames, s.false_alarms_per_1000_id_frames, opt(s.false_alarms_per_hour));
        h.push_str("<table><tr><th>input</th><th>OOD type</th><th>onset frame</th><th>frames</th><th>delay (frames)</th><th>delay (s)</th></tr>");
        for g in &s.segments {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                g.input,
                esc(&g.ood_type),
                g.onset_index,
                g.frames,
                g.delay_frames.map_or("missed".into(), |d| d.to_string()),
                opt(g.delay_s)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Latency per stage (ms)</h2><table><tr><th>stage</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>");
    for (stage, p) in &r.latency_ms {
        let _ = write!(
            h,
            "<tr><td>{stage}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            p.p50, p.p90, p.p99, p.max
        );
    }
    h.push_str("</table><h2>Plots</h2>");
    if let Some(e) = &r.plot_error {
        let _ = write!(h, "<p class=warn>Plots not drawn: {}</p>", esc(e));
    }
    for p in &r.plots {
        let _ = write!(h, "<p><img src=\"{0}\" alt=\"{0}\"></p>", esc(p));
    }
    h.push_str("</body></html>\n");
    h
}
