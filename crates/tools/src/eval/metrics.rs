//! Detection metrics with OOD as the positive class, defined as scikit-learn (and the
//! pytorch-ood / OpenOOD benchmarks) define them, ties included.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    #[error("metrics need both classes: got {pos} OOD and {neg} in-distribution frames")]
    SingleClass { pos: usize, neg: usize },
    #[error("scores must be finite")]
    NonFinite,
    #[error("{scores} scores but {labels} labels: give one label per score")]
    LengthMismatch { scores: usize, labels: usize },
}

/// AUROC, AUPR with OOD positive (`aupr_out`) and with ID positive on negated scores
/// (`aupr_in`), and the false-positive rate at 95% true-positive rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    pub auroc: f64,
    pub aupr_in: f64,
    pub aupr_out: f64,
    pub fpr_at_95_tpr: f64,
    pub n_ood: usize,
    pub n_id: usize,
}

/// `scores` higher = more OOD; `is_ood` the labels.
pub fn metrics(scores: &[f64], is_ood: &[bool]) -> Result<Metrics, MetricError> {
    if scores.len() != is_ood.len() {
        return Err(MetricError::LengthMismatch {
            scores: scores.len(),
            labels: is_ood.len(),
        });
    }
    let pos = is_ood.iter().filter(|&&b| b).count();
    let neg = is_ood.len() - pos;
    if pos == 0 || neg == 0 {
        return Err(MetricError::SingleClass { pos, neg });
    }
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(MetricError::NonFinite);
    }
    let neg_scores: Vec<f64> = scores.iter().map(|s| -s).collect();
    let id_pos: Vec<bool> = is_ood.iter().map(|b| !b).collect();
    Ok(Metrics {
        auroc: auroc(scores, is_ood),
        aupr_out: average_precision(scores, is_ood),
        aupr_in: average_precision(&neg_scores, &id_pos),
        fpr_at_95_tpr: fpr_at_tpr(scores, is_ood, 0.95),
        n_ood: pos,
        n_id: neg,
    })
}

/// Distinct thresholds from high to low with cumulative (tp, fp) counts, as sklearn's
/// `_binary_clf_curve`.
fn curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut out = vec![];
    for (k, &i) in idx.iter().enumerate() {
        if labels[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = k + 1 == idx.len() || scores[idx[k + 1]] != scores[i];
        if last_of_tie {
            out.push((tp, fp));
        }
    }
    out
}

/// ROC curve points (FPR, TPR) from (0, 0), one per distinct threshold, as sklearn.
pub fn roc_points(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let c = curve(scores, labels);
    let (p, n) = c.last().copied().unwrap_or((1.0, 1.0));
    std::iter::once((0.0, 0.0))
        .chain(c.iter().map(|(tp, fp)| (fp / n.max(1.0), tp / p.max(1.0))))
        .collect()
}

/// Area under the ROC curve (trapezoids over the tie-collapsed curve = Mann-Whitney U).
pub fn auroc(scores: &[f64], labels: &[bool]) -> f64 {
    let c = curve(scores, labels);
    let (p, n) = c.last().copied().unwrap_or((0.0, 0.0));
    let (mut area, mut prev) = (0.0, (0.0, 0.0));
    for &(tp, fp) in &c {
        area += (fp - prev.1) * (tp + prev.0) / 2.0;
        prev = (tp, fp);
    }
    area / (p * n)
}

/// sklearn's `average_precision_score`: sum over thresholds of (R_k - R_{k-1}) * P_k.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    let c = curve(scores, labels);
    let p = c.last().map_or(0.0, |x| x.0);
    let (mut ap, mut prev_recall) = (0.0, 0.0);
    for &(tp, fp) in &c {
        let recall = tp / p;
        let precision = tp / (tp + fp);
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    ap
}

/// The smallest FPR among ROC points whose TPR reaches `target` (sklearn `roc_curve` points).
pub fn fpr_at_tpr(scores: &[f64], labels: &[bool], target: f64) -> f64 {
    let c = curve(scores, labels);
    let (p, n) = c.last().copied().unwrap_or((0.0, 0.0));
    c.iter()
        .find(|(tp, _)| tp / p >= target)
        .map_or(1.0, |(_, fp)| fp / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values_with_ties() {
        // OOD: 0.9, 0.5 ; ID: 0.5, 0.1. Pairs: (0.9>0.5)=1,(0.9>0.1)=1,(0.5=0.5)=0.5,(0.5>0.1)=1 -> 3.5/4
        let s = [0.9, 0.5, 0.5, 0.1];
        let l = [true, true, false, false];
        let m = metrics(&s, &l).unwrap();
        assert!((m.auroc - 0.875).abs() < 1e-12);
        // thresholds 0.9: R=.5 P=1 ; 0.5: R=1 P=2/3 -> AP = .5*1 + .5*2/3
        assert!((m.aupr_out - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
        // TPR reaches 0.95 only at threshold 0.5, where FPR = 0.5
        assert_eq!(m.fpr_at_95_tpr, 0.5);
        assert!(matches!(
            metrics(&s, &[true; 4]),
            Err(MetricError::SingleClass { .. })
        ));
        // More scores than labels was an index panic; now a clear error.
        assert_eq!(
            metrics(&s, &[true, false]),
            Err(MetricError::LengthMismatch {
                scores: 4,
                labels: 2
            })
        );
    }
}
