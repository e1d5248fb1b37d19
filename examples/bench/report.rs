//! Output: readable tables, one JSON line per result, and the targets.

use serde_json::{Map, Value, json};

/// The p-th percentile (0..=100) of `v`, nearest rank; NaN when empty.
pub(crate) fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    #[allow(clippy::cast_sign_loss)] // p is within 0..=100
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(0.0) as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Formats a count for a table.
pub(crate) fn int(v: u64) -> String {
    if v >= 1000 {
        num(v as f64)
    } else {
        v.to_string()
    }
}

/// Formats a number for a table: NaN as "-", few decimals for small values.
pub(crate) fn num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 1000.0 {
        let mut s = format!("{:.0}", v);
        // thousands separators
        let neg = s.starts_with('-');
        if neg {
            s.remove(0);
        }
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if neg { format!("-{out}") } else { out }
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Prints a table: a title, headers and rows (Markdown, so a run's output
/// pastes into docs/benchmarks.md as it is).
pub(crate) fn table(title: &str, headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    println!();
    println!("{title}");
    println!();
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if i == 0 {
                s.push_str(&format!(" {c}{} |", " ".repeat(pad)));
            } else {
                s.push_str(&format!(" {}{c} |", " ".repeat(pad)));
            }
        }
        println!("{s}");
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    let mut sep = String::from("|");
    for (i, wi) in w.iter().enumerate() {
        if i == 0 {
            sep.push_str(&format!("{}|", "-".repeat(wi + 2)));
        } else {
            sep.push_str(&format!("{}:|", "-".repeat(wi + 1)));
        }
    }
    println!("{sep}");
    for r in rows {
        line(r.clone());
    }
    println!();
}

/// One target of the issue and how this run did against it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) goal: String,
    pub(crate) measured: String,
    /// None: not measured in this run.
    pub(crate) pass: Option<bool>,
}

/// Everything a run reports.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) server: String,
    /// Settings every result carries (server settings, machine, sizes).
    pub(crate) common: Map<String, Value>,
    pub(crate) targets: Vec<Target>,
}

impl Report {
    /// Prints one JSON line for a result.
    pub(crate) fn emit(
        &self,
        scenario: &str,
        variant: &str,
        metric: &str,
        value: f64,
        unit: &str,
        settings: Value,
    ) {
        let mut s = self.common.clone();
        if let Value::Object(m) = settings {
            s.extend(m);
        }
        let value = if value.is_finite() {
            json!((value * 1000.0).round() / 1000.0)
        } else {
            Value::Null
        };
        let line = json!({
            "scenario": scenario,
            "variant": variant,
            "metric": metric,
            "value": value,
            "unit": unit,
            "server": self.server,
            "settings": s,
        });
        println!("{line}");
    }

    /// Records a target's outcome.
    pub(crate) fn target(&mut self, name: &str, goal: &str, measured: String, pass: Option<bool>) {
        self.targets.push(Target {
            name: name.into(),
            goal: goal.into(),
            measured,
            pass,
        });
    }

    /// Prints the targets table and one JSON line per target.
    pub(crate) fn print_targets(&self) {
        if self.targets.is_empty() {
            return;
        }
        let rows: Vec<Vec<String>> = self
            .targets
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.goal.clone(),
                    t.measured.clone(),
                    match t.pass {
                        Some(true) => "PASS".into(),
                        Some(false) => "FAIL".into(),
                        None => "-".into(),
                    },
                ]
            })
            .collect();
        table(
            "## targets",
            &["target", "goal", "measured", "result"],
            &rows,
        );
        for t in &self.targets {
            println!(
                "{}",
                json!({
                    "scenario": "targets",
                    "variant": t.name,
                    "metric": "pass",
                    "value": t.pass,
                    "unit": "bool",
                    "goal": t.goal,
                    "measured": t.measured,
                    "server": self.server,
                    "settings": self.common,
                })
            );
        }
    }
}
