//! Expectations against what a scenario's run did: one [`Mismatch`] per
//! failed oracle, with the expected and the actual value, and [`render`] to
//! show them as a readable diff. `oracles/README.md` documents each oracle.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Expect, Observed};

/// One oracle that said no.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// The oracle type: `Status`, `Termination`, `Path`, `Error`, `Receipts`,
    /// `SideEffect`, `Fakes`, `State`, `Hitl`, `Compensation`, `Trace`,
    /// `Replay`, `Cost`.
    pub oracle: &'static str,
    /// What it looked at (a tool, a counter, a JSON pointer).
    pub subject: String,
    pub expected: Value,
    pub actual: Value,
}

/// Every expectation of `expect` against `observed`; empty when all hold.
pub fn check(expect: &Expect, observed: &Observed) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut judge = |oracle: &'static str, subject: &str, expected: Value, actual: Value| {
        if expected != actual {
            out.push(Mismatch { oracle, subject: subject.to_owned(), expected, actual });
        }
    };
    let last = observed.reports.last();
    judge("Status", "status", json!(expect.status), json!(last.map(|r| r.status.as_str())));
    if let Some(t) = &expect.termination {
        judge("Termination", "termination", json!(t), json!(last.and_then(|r| r.termination).map(|t| t.as_str())));
    }
    if let Some(path) = &expect.path {
        judge("Path", "steps run", json!(path), json!(last.map(|r| &r.path)));
    }
    if let Some(needle) = &expect.error_contains {
        let error = last.and_then(|r| r.error.clone());
        if !error.as_deref().is_some_and(|e| e.contains(needle.as_str())) {
            judge("Error", "last error contains", json!(needle), json!(error));
        }
    }
    if let Some(receipts) = &expect.receipts {
        let tools: std::collections::BTreeSet<&String> = receipts.keys().chain(observed.receipts.keys()).collect();
        for tool in tools {
            let want = receipts.get(tool).copied().unwrap_or(0);
            let have = observed.receipts.get(tool).copied().unwrap_or(0);
            judge("Receipts", tool, json!(want), json!(have));
        }
    }
    for (counter, want) in &expect.side_effects {
        judge("SideEffect", counter, json!(want), json!(observed.counters.get(counter)));
    }
    for (pointer, want) in &expect.fakes {
        judge("Fakes", pointer, want.clone(), observed.fakes.pointer(pointer).cloned().unwrap_or(Value::Null));
    }
    for (pointer, want) in &expect.state {
        judge("State", pointer, want.clone(), observed.state.pointer(pointer).cloned().unwrap_or(Value::Null));
    }
    for (status, want) in &expect.hitl {
        judge("Hitl", status, json!(want), json!(observed.hitl.get(status).copied().unwrap_or(0)));
    }
    if let Some(steps) = &expect.compensated {
        let done: Vec<Value> = observed
            .state
            .pointer("/compensation/done")
            .and_then(Value::as_array)
            .map(|d| d.iter().map(|c| c["step"].clone()).collect())
            .unwrap_or_default();
        judge("Compensation", "compensation steps run", json!(steps), json!(done));
    }
    if expect.trace_complete {
        judge("Trace", "gaps", json!([]), json!(observed.trace_gaps));
    }
    if expect.replay {
        judge("Replay", "transcripts that diverged", json!([]), json!(observed.replay_problems));
    }
    if let Some(positive) = expect.cost_positive {
        judge("Cost", "cost > 0", json!(positive), json!(observed.cost.micro_usd > 0 || observed.cost.tokens > 0));
    }
    if let Some(calls) = expect.model_calls {
        judge("Cost", "model calls", json!(calls), json!(observed.model_calls));
    }
    if expect.model_cost {
        judge("Cost", "model calls without cost", json!([]), json!(observed.model_cost_problems));
    }
    out
}

/// The mismatches of scenario `name` as a diff a person reads: one block per
/// oracle, `-` expected, `+` actual.
pub fn render(name: &str, mismatches: &[Mismatch]) -> String {
    let mut s = format!("golden scenario {name}: {} oracle(s) failed\n", mismatches.len());
    for m in mismatches {
        let _ = writeln!(s, "  {} oracle, {}:", m.oracle, m.subject);
        let _ = writeln!(s, "    - expected: {}", m.expected);
        let _ = writeln!(s, "    + actual:   {}", m.actual);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::parse;

    fn observed() -> Observed {
        Observed {
            reports: Vec::new(),
            state: json!({"outputs": {"capture": {"status": "succeeded"}}, "compensation": {"done": [{"step": "refund_payment"}]}}),
            receipts: [("stripe.payment_intent.capture".to_owned(), 1)].into(),
            fakes: json!({"stripe": {"captures": [{}]}}),
            counters: [("stripe_captures".to_owned(), 1)].into(),
            hitl: [("requests".to_owned(), 1), ("approved".to_owned(), 1)].into(),
            trace_gaps: Vec::new(),
            replay_problems: Vec::new(),
            cost: autobiz_kernel::trace::Cost::default(),
            model_calls: 1,
            model_cost_problems: vec!["wf05-1: model call seq 2 cost 42 tokens, 0 micro-USD".into()],
            run_time: std::time::Duration::ZERO,
            requests: Vec::new(),
        }
    }

    #[test]
    fn p1_t27_each_oracle_reports_expected_and_actual() {
        let scenario = parse(
            "WF01/x",
            r#"
title = "t"
workflow = "WF01"
event = {}
[expect]
status = "COMPLETED"
receipts = { "stripe.refund.create" = 1 }
side_effects = { stripe_captures = 2 }
state = { "/outputs/capture/status" = "succeeded" }
hitl = { approved = 0 }
compensated = []
cost_positive = true
model_calls = 2
"#,
        )
        .unwrap();
        let m = check(&scenario.expect, &observed());
        let got: Vec<(&str, &str)> = m.iter().map(|m| (m.oracle, m.subject.as_str())).collect();
        assert_eq!(
            got,
            [
                ("Status", "status"),
                ("Receipts", "stripe.payment_intent.capture"),
                ("Receipts", "stripe.refund.create"),
                ("SideEffect", "stripe_captures"),
                ("Hitl", "approved"),
                ("Compensation", "compensation steps run"),
                ("Cost", "cost > 0"),
                ("Cost", "model calls"),
                ("Cost", "model calls without cost"),
            ]
        );
        let text = render("WF01/x", &m);
        assert!(text.contains("SideEffect oracle, stripe_captures:\n    - expected: 2\n    + actual:   1"), "{text}");
        assert!(text.starts_with("golden scenario WF01/x: 9 oracle(s) failed"), "{text}");
    }

    #[test]
    fn p1_t27_a_scenario_with_unknown_fields_is_refused() {
        let e = parse("WF01/x", "title = \"t\"\nworkflow = \"WF01\"\nevent = {}\nexpcet = {}\n").unwrap_err();
        assert!(e.starts_with("WF01/x:") && e.contains("expcet"), "{e}");
    }
}
