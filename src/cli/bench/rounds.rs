//! Rounds of a comparison: each the no-op baseline (when asked for) and then the server, so that
//! both sides sample the same minutes of a machine whose load drifts; every round printed, then
//! the median.

use super::load::LoadReport;

/// One round of a comparison: the no-op baseline's run (when there is one), then the target's.
#[derive(Clone, Debug)]
pub(crate) struct Round {
    pub(crate) baseline: Option<LoadReport>,
    pub(crate) target: LoadReport,
}

impl Round {
    /// The target's requests/s over the baseline's.
    pub(crate) fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .map(|b| self.target.requests_per_second() / b.requests_per_second())
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// How `rolegate bench` names the two sides in its output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Labels<'a> {
    pub(crate) baseline: &'a str,
    pub(crate) target: &'a str,
    /// The baseline in the ratio's line: "the no-op baseline".
    pub(crate) ratio_of: &'a str,
}

/// Runs `rounds` rounds, each the baseline (when `with_baseline`) and then the target, so that
/// both sides sample the same minutes of a machine whose load drifts, and prints each run as it
/// ends. With more than one round it prints each round's ratio and then their median (or, without
/// a baseline, the median requests/s); with one round, what `rolegate bench` always printed.
pub(crate) async fn alternate<E>(
    rounds: usize,
    labels: Labels<'_>,
    with_baseline: bool,
    mut baseline: impl AsyncFnMut() -> Result<LoadReport, E>,
    mut target: impl AsyncFnMut() -> Result<LoadReport, E>,
) -> Result<Vec<Round>, E> {
    let rounds = rounds.max(1);
    let width = labels.baseline.len().max(labels.target.len()) + 2;
    let prefix = |i: usize| match rounds {
        1 => String::new(),
        _ => format!("round {}/{rounds}  ", i + 1),
    };
    let mut done = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let base = match with_baseline {
            true => {
                let report = baseline().await?;
                println!("{}{:width$}{report}", prefix(i), labels.baseline);
                Some(report)
            }
            false => None,
        };
        let report = target().await?;
        println!("{}{:width$}{report}", prefix(i), labels.target);
        if report.errors > 0 {
            eprintln!("warning: {} calls failed", report.errors);
        }
        let round = Round {
            baseline: base,
            target: report,
        };
        if let (Some(ratio), true) = (round.ratio(), rounds > 1) {
            println!("{}{:width$}{ratio:.3}", prefix(i), "ratio");
        }
        done.push(round);
    }
    print_summary(&done, labels, width);
    Ok(done)
}

/// After the rounds: the ratio (or its median over the rounds), or, without a baseline, the
/// median requests/s; nothing for one round without a baseline.
fn print_summary(done: &[Round], labels: Labels<'_>, width: usize) {
    let rounds = done.len();
    let ratios: Vec<f64> = done.iter().filter_map(Round::ratio).collect();
    match (median(&ratios), rounds) {
        (Some(ratio), 1) => {
            println!(
                "{:width$}{ratio:.3} × {}'s requests/s",
                "ratio", labels.ratio_of
            )
        }
        (Some(ratio), _) => println!(
            "{:width$}median {ratio:.3} of {rounds} rounds × {}'s requests/s",
            "ratio", labels.ratio_of
        ),
        (None, 1) => {}
        (None, _) => {
            let rates: Vec<f64> = done
                .iter()
                .map(|r| r.target.requests_per_second())
                .collect();
            let rate = median(&rates).unwrap_or_default();
            println!(
                "{:width$}median {rate:.0} req/s of {rounds} rounds",
                labels.target
            );
        }
    }
}
