//! Choosing the detector to deploy from measured candidates: the fastest one whose AUROC
//! stays within a budget of the teacher's in every OOD partition and that meets the deadline.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One measured candidate (the teacher included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub name: String,
    /// AUROC of the CUSUM statistic per OOD partition.
    pub auroc: BTreeMap<String, f64>,
    /// Encoder latency p50 in ms, measured in the same run as the teacher's.
    pub latency_ms: f64,
}

/// Why a candidate was not selected, or that it was.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Selected,
    Eligible,
    /// AUROC dropped more than the budget in this partition (by this much).
    AurocDrop(String, f64),
    /// A partition the teacher was evaluated on is missing.
    Missing(String),
    TooSlow,
}

/// The index of the selected candidate (None if none qualifies) and a verdict per candidate.
/// A candidate qualifies if, in every partition of the teacher, its AUROC is at most
/// `max_drop` below the teacher's, and its latency is at most `deadline_ms`; among those the
/// fastest wins (ties: the higher mean AUROC, then the first).
pub fn select(
    teacher: &Candidate,
    candidates: &[Candidate],
    max_drop: f64,
    deadline_ms: f64,
) -> (Option<usize>, Vec<Verdict>) {
    let mut verdicts: Vec<Verdict> = candidates
        .iter()
        .map(|c| {
            for (k, t) in &teacher.auroc {
                match c.auroc.get(k) {
                    None => return Verdict::Missing(k.clone()),
                    Some(a) if t - a > max_drop + 1e-12 => {
                        return Verdict::AurocDrop(k.clone(), t - a)
                    }
                    _ => {}
                }
            }
            if c.latency_ms > deadline_ms {
                Verdict::TooSlow
            } else {
                Verdict::Eligible
            }
        })
        .collect();
    let mean = |c: &Candidate| c.auroc.values().sum::<f64>() / c.auroc.len().max(1) as f64;
    let best = (0..candidates.len())
        .filter(|&i| verdicts[i] == Verdict::Eligible)
        .min_by(|&a, &b| {
            let (ca, cb) = (&candidates[a], &candidates[b]);
            ca.latency_ms
                .total_cmp(&cb.latency_ms)
                .then(mean(cb).total_cmp(&mean(ca)))
                .then(a.cmp(&b))
        });
    if let Some(i) = best {
        verdicts[i] = Verdict::Selected;
    }
    (best, verdicts)
}

/// Indices of the candidates on the Pareto front of (lower latency, higher mean AUROC).
pub fn pareto_front(candidates: &[Candidate]) -> Vec<usize> {
    let mean = |c: &Candidate| c.auroc.values().sum::<f64>() / c.auroc.len().max(1) as f64;
    (0..candidates.len())
        .filter(|&i| {
            let (li, ai) = (candidates[i].latency_ms, mean(&candidates[i]));
            !candidates.iter().any(|c| {
                let (l, a) = (c.latency_ms, mean(c));
                l <= li && a >= ai && (l < li || a > ai)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, b: f64, r: f64, ms: f64) -> Candidate {
        Candidate {
            name: name.into(),
            auroc: [("brightness".to_string(), b), ("rain".to_string(), r)].into(),
            latency_ms: ms,
        }
    }

    #[test]
    fn picks_the_fastest_within_the_auroc_budget_and_deadline() {
        let teacher = cand("teacher", 0.99, 0.95, 4.0);
        let table = vec![
            cand("fast_but_bad_rain", 0.99, 0.90, 0.5), // rain drops 0.05
            cand("ok_slow", 0.99, 0.95, 2.0),
            cand("ok_fast", 0.98, 0.94, 1.0), // drops 0.01 each
            cand("ok_fastest_missing", 0.99, 0.95, 0.8),
            cand("fastest_ok", 0.99, 0.95, 0.9),
        ];
        let mut table = table;
        table[3].auroc.remove("rain");
        let (best, v) = select(&teacher, &table, 0.02, 1.5);
        assert_eq!(
            best,
            Some(4),
            "0.9 ms, no AUROC lost: the fastest qualifying"
        );
        assert!(
            matches!(&v[0], Verdict::AurocDrop(k, d) if k == "rain" && (d - 0.05).abs() < 1e-9)
        );
        assert_eq!(v[1], Verdict::TooSlow);
        assert_eq!(v[2], Verdict::Eligible);
        assert_eq!(v[3], Verdict::Missing("rain".into()));
        assert_eq!(v[4], Verdict::Selected);
        // A tighter deadline leaves only the 0.9 ms one; a zero budget excludes ok_fast too.
        let (best, v) = select(&teacher, &table, 0.02, 0.95);
        assert_eq!((best, &v[2]), (Some(4), &Verdict::TooSlow));
        let (best, _) = select(&teacher, &table, 0.0, 0.85);
        assert_eq!(best, None);
    }

    #[test]
    fn pareto_front_drops_dominated_candidates() {
        let table = vec![
            cand("a", 0.9, 0.9, 1.0),
            cand("b", 0.8, 0.8, 2.0),
            cand("c", 0.95, 0.95, 3.0),
            cand("d", 0.9, 0.9, 1.0),
        ];
        assert_eq!(pareto_front(&table), vec![0, 2, 3]);
    }
}
