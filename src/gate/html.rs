//! The gate's self-contained HTML report (`report.html` in the evidence
//! directory): no scripts, no external resources, every value escaped.

use std::fmt::Write;

use super::harness::{GateOutcome, StageStatus};
use super::{ClassReport, Outcome, Verdict};

/// Escape text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".to_owned())
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "<span class=pass>PASS</span>",
        Verdict::Fail => "<span class=fail>FAIL</span>",
    }
}

/// A stage's own rows inform (`gated = false`); the all-stages rows decide.
fn class_row(html: &mut String, scope: &str, c: &ClassReport, gated: bool) {
    let shown = if gated { verdict(c.verdict).to_owned() } else { format!("({})", verdict(c.verdict)) };
    let _ = writeln!(
        html,
        "<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        escape(scope),
        c.priority,
        c.successes,
        c.trials,
        opt(c.raw_rate),
        opt(c.lower_bound),
        c.threshold,
        shown
    );
}

/// Render the report. `commit` and `config_hash` identify what was gated.
pub fn render(outcome: &GateOutcome, commit: &str, config_hash: &str) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>autobiz gate {}</title><style>\
body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}.pass{{color:#060;font-weight:bold}}\
.fail{{color:#b00;font-weight:bold}}</style></head><body>",
        escape(commit)
    );
    let _ = writeln!(html, "<h1>autobiz gate: {}</h1>", verdict(outcome.verdict));
    let _ = writeln!(
        html,
        "<p>commit <code>{}</code>, config <code>{}</code>, {} runs, confidence {}, P1 threshold {}, {} to {}</p>",
        escape(commit),
        escape(config_hash),
        outcome.runs,
        outcome.config.confidence,
        outcome.config.p1_threshold,
        outcome.started_at.to_rfc3339(),
        outcome.finished_at.to_rfc3339()
    );
    if !outcome.problems.is_empty() {
        html.push_str("<h2>Problems</h2><ul>");
        for p in &outcome.problems {
            let _ = write!(html, "<li>{}</li>", escape(p));
        }
        html.push_str("</ul>");
    }
    html.push_str("<h2>Gate</h2><table><tr><th>scope</th><th>class</th><th>successes</th><th>trials</th><th>raw rate</th><th>lower bound</th><th>threshold</th><th>verdict</th></tr>");
    for stage in &outcome.stages {
        if let Some(c) = &stage.computation {
            class_row(&mut html, stage.stage.as_str(), &c.p0, false);
            class_row(&mut html, stage.stage.as_str(), &c.p1, false);
        }
    }
    class_row(&mut html, "all gated stages", &outcome.computation.p0, true);
    class_row(&mut html, "all gated stages", &outcome.computation.p1, true);
    html.push_str("</table><p>The all-stages rows decide; a stage's own rows, in parentheses, inform.</p>");
    for note in [&outcome.computation.p0.note, &outcome.computation.p1.note].into_iter().flatten() {
        let _ = write!(html, "<p>{}</p>", escape(note));
    }
    html.push_str("<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>tests</th><th>runs</th></tr>");
    for stage in &outcome.stages {
        let status = match stage.status {
            StageStatus::Passed => "passed".to_owned(),
            StageStatus::Failed => "failed".to_owned(),
            StageStatus::Planned => format!("planned (issue {})", stage.issue.unwrap_or(0)),
            StageStatus::Empty => "empty".to_owned(),
            StageStatus::NotRun => "not run".to_owned(),
        };
        let runs: Vec<String> = stage
            .runs
            .iter()
            .map(|r| {
                format!(
                    "run {}: {} passed, {} failed, {} missing, {} ms",
                    r.run, r.passed, r.failed, r.missing, r.duration_ms
                )
            })
            .collect();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            stage.stage.as_str(),
            escape(&status),
            stage.tests,
            escape(&runs.join("; "))
        );
    }
    html.push_str("</table><h2>Flakes</h2>");
    if outcome.flakes.is_empty() {
        html.push_str("<p>none</p>");
    } else {
        html.push_str("<table><tr><th>test</th><th>pass rate</th><th>Wilson interval</th><th>quarantined</th></tr>");
        for f in &outcome.flakes {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{:.3}</td><td>[{:.3}, {:.3}]</td><td>{}</td></tr>",
                escape(&f.flake.test_id),
                f.pass_rate,
                f.interval.0,
                f.interval.1,
                f.quarantined
            );
        }
        html.push_str("</table>");
    }
    html.push_str("<h2>Tests that did not pass</h2><ul>");
    for stage in &outcome.stages {
        for run in &stage.runs {
            for t in run.tests.iter().filter(|t| t.outcome != Outcome::Passed) {
                let _ = write!(
                    html,
                    "<li>{} run {}: {} {:?}{}</li>",
                    stage.stage.as_str(),
                    run.run,
                    escape(&t.id),
                    t.outcome,
                    if t.quarantined { " (quarantined)" } else { "" }
                );
            }
        }
    }
    let t = &outcome.traceability;
    let _ = write!(
        html,
        "</ul><h2>Traceability</h2><p>entries bound {}/{}, tests mapped {}/{}, plumbing {}</p><ul>",
        t.check.entries_bound, t.check.entries, t.check.tests_mapped, t.check.tests, t.check.plumbing
    );
    for nc in &t.not_covered {
        let _ = write!(html, "<li>not covered: {}</li>", escape(nc));
    }
    html.push_str("</ul></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_t18_html_escapes_everything() {
        assert_eq!(
            escape("<script>a & 'b' \"c\"</script>"),
            "&lt;script&gt;a &amp; &#39;b&#39; &quot;c&quot;&lt;/script&gt;"
        );
    }
}
