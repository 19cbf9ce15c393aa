//! The operations artefacts shipped in `ops/` and `docs/runbooks/`
//! (P1-TASK-27, P1-OR01..OR06): the Prometheus alert rules pass
//! `promtool check rules` and each alert fires in a `promtool test rules`
//! unit test (and stays quiet below its threshold); every alert links a
//! runbook that names it back; the Grafana dashboard has a panel per
//! operational concern; rules and panels read only series that
//! `ops/metrics.toml` lists.
//!
//! The six OR ids are the six operational concerns of the task's
//! deliverable, in its order: OR01 gate pass rates, OR02 the HITL backlog,
//! OR03 breaker states, OR04 the reconciliation queue, OR05 invariant
//! violations, OR06 cost attribution and deploy rollbacks.
//!
//! `promtool` comes from Debian's `prometheus` package; `ci/ensure-tools`
//! installs it. These tests fail, never skip, without it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
struct Group {
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn alerts() -> Vec<Rule> {
    let file: RuleFile = yaml_serde::from_str(&read("ops/prometheus/alerts.yml")).expect("alerts.yml parses");
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

#[derive(Debug, Deserialize)]
struct PromtoolTests {
    rule_files: Vec<String>,
    tests: Vec<PromtoolCase>,
}

#[derive(Debug, Deserialize)]
struct PromtoolCase {
    alert_rule_test: Vec<AlertRuleTest>,
}

#[derive(Debug, Deserialize)]
struct AlertRuleTest {
    alertname: String,
    exp_alerts: Vec<serde_json::Value>,
}

/// For each alert a promtool test file exercises: (fires somewhere, stays quiet somewhere).
fn coverage(test_file: &str) -> BTreeMap<String, (bool, bool)> {
    let tests: PromtoolTests = yaml_serde::from_str(&read(test_file)).expect("promtool test file parses");
    assert_eq!(tests.rule_files, ["../alerts.yml"], "{test_file} tests the shipped rules");
    let mut seen: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for case in tests.tests.iter().flat_map(|t| &t.alert_rule_test) {
        let entry = seen.entry(case.alertname.clone()).or_default();
        if case.exp_alerts.is_empty() {
            entry.1 = true;
        } else {
            entry.0 = true;
        }
    }
    seen
}

fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is not installed: run `bash ci/ensure-tools` (Debian package prometheus)"
    );
    Command::new("promtool")
}

/// Runs `promtool test rules FILE` in `dir`; Ok(()) or promtool's report.
fn promtool_test(dir: &Path, file: &str) -> Result<(), String> {
    let out = promtool().current_dir(dir).args(["test", "rules", file]).output().expect("promtool runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// The concern `id` (OR01..OR06): its promtool file fires and quiets each
/// of `expected` alerts, and passes; the dashboard has `panel` reading
/// `series`.
fn assert_concern(test_file: &str, expected: &[&str], panel: &str, series: &[&str]) {
    let cov = coverage(test_file);
    for alert in expected {
        assert!(alerts().iter().any(|a| a.alert == *alert), "alerts.yml has no {alert}");
        assert_eq!(cov.get(*alert), Some(&(true, true)), "{test_file} must make {alert} fire and stay quiet");
    }
    let dir = root().join("ops/prometheus/tests");
    let file = Path::new(test_file).file_name().unwrap().to_str().unwrap();
    promtool_test(&dir, file).unwrap_or_else(|report| panic!("{test_file}:\n{report}"));

    let dashboard = dashboard();
    let found = panels(&dashboard).into_iter().find(|p| p["title"] == panel);
    let found = found.unwrap_or_else(|| panic!("the dashboard has no panel {panel:?}"));
    let exprs: Vec<&str> = found["targets"].as_array().unwrap().iter().filter_map(|t| t["expr"].as_str()).collect();
    for s in series {
        assert!(exprs.iter().any(|e| series_of(e).contains(*s)), "panel {panel:?} does not read {s}: {exprs:?}");
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read("ops/grafana/autobiz-overview.json")).expect("the dashboard is JSON")
}

fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"].as_array().expect("panels").iter().collect()
}

/// The series names a PromQL expression reads: identifiers outside label
/// matchers, ranges and `by (...)` lists that are not functions, keywords or
/// aggregations; a histogram's `_sum`/`_count`/`_bucket` names its base.
fn series_of(expr: &str) -> BTreeSet<String> {
    // Keywords, and aggregations (which may be followed by `by (...)` rather than `(`).
    const WORDS: &str = "by without on ignoring group_left group_right bool and or unless offset \
        sum min max avg count group stddev stdvar topk bottomk quantile count_values";
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let (mut i, mut depth_braces, mut depth_brackets) = (0, 0, 0);
    let mut after_grouping = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        match c {
            '{' => depth_braces += 1,
            '}' => depth_braces -= 1,
            '[' => depth_brackets += 1,
            ']' => depth_brackets -= 1,
            '"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += 1;
                }
            }
            _ if (c.is_ascii_alphabetic() || c == '_') && depth_braces == 0 && depth_brackets == 0 => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':') {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start().chars().next();
                if matches!(word, "by" | "without" | "on" | "ignoring") {
                    after_grouping = true;
                    continue;
                }
                if after_grouping && next != Some('(') {
                    // a label inside `by (...)`
                } else if next != Some('(') && !WORDS.split_whitespace().any(|w| w == word) {
                    let base = ["_sum", "_count", "_bucket"].iter().find_map(|s| word.strip_suffix(s)).unwrap_or(word);
                    out.insert(base.to_owned());
                }
                continue;
            }
            ')' => after_grouping = false,
            _ => {}
        }
        i += 1;
    }
    out
}

#[derive(Debug, Deserialize)]
struct MetricsContract {
    metric: Vec<Metric>,
}

#[derive(Debug, Deserialize)]
struct Metric {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    labels: Vec<String>,
    exporter: String,
    help: String,
    exported: bool,
    issue: Option<u32>,
}

fn contract() -> Vec<Metric> {
    let c: MetricsContract = toml::from_str(&read("ops/metrics.toml")).expect("ops/metrics.toml parses");
    c.metric
}

#[test]
fn p1_or01_gate_pass_rate_drop_alert_fires_and_the_dashboard_shows_the_lower_bound() {
    assert_concern(
        "ops/prometheus/tests/or01_gate.yml",
        &["AutobizGatePassRateDrop"],
        "Gate pass rates",
        &["gate_lower_bound", "gate_pass_rate"],
    );
}

#[test]
fn p1_or02_hitl_oldest_over_15_minutes_and_depth_over_50_alerts_fire() {
    assert_concern(
        "ops/prometheus/tests/or02_hitl.yml",
        &["AutobizHitlOldestPending", "AutobizHitlBacklogDeep"],
        "HITL backlog",
        &["hitl_pending_requests", "hitl_oldest_pending_age_seconds"],
    );
}

#[test]
fn p1_or03_breaker_open_over_5_minutes_alert_fires() {
    assert_concern(
        "ops/prometheus/tests/or03_breakers.yml",
        &["AutobizBreakerOpen"],
        "Circuit breaker states",
        &["circuit_breaker_state"],
    );
}

#[test]
fn p1_or04_drift_detected_alert_fires_and_clears() {
    assert_concern(
        "ops/prometheus/tests/or04_reconciliation.yml",
        &["AutobizDriftDetected"],
        "Reconciliation queue",
        &["reconciliation_open_cases", "drift_case_opened_total"],
    );
}

#[test]
fn p1_or05_invariant_violation_alert_fires_naming_the_invariant() {
    assert_concern(
        "ops/prometheus/tests/or05_invariants.yml",
        &["AutobizInvariantViolation"],
        "Invariant violations",
        &["invariant_violation_total"],
    );
}

#[test]
fn p1_or06_deploy_rollback_alert_fires_and_the_dashboard_attributes_cost() {
    assert_concern(
        "ops/prometheus/tests/or06_deploy.yml",
        &["AutobizDeployRollback"],
        "Cost attribution",
        &["run_cost_histogram", "deploy_rollback_total"],
    );
}

#[test]
fn p1_or02_promtool_accepts_the_rules_and_every_alert_has_a_firing_test() {
    let out = promtool().current_dir(root()).args(["check", "rules", "ops/prometheus/alerts.yml"]).output().unwrap();
    assert!(out.status.success(), "promtool check rules: {}", String::from_utf8_lossy(&out.stdout));

    let mut covered: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("ops/prometheus/tests")).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(root()).unwrap().to_str().unwrap().to_owned();
        for (alert, (fires, quiet)) in coverage(&rel) {
            let e = covered.entry(alert).or_default();
            e.0 |= fires;
            e.1 |= quiet;
        }
    }
    for rule in alerts() {
        assert_eq!(
            covered.get(&rule.alert),
            Some(&(true, true)),
            "{} needs a firing and a quiet promtool case",
            rule.alert
        );
    }
}

#[test]
fn p1_or02_a_rule_that_no_longer_fires_fails_its_promtool_test() {
    // The firing tests can fail: raise the HITL age threshold from 15 minutes
    // to an hour in a copy of the rules and run the same unit test on it.
    let dir = tempfile::tempdir().unwrap();
    let rules = read("ops/prometheus/alerts.yml");
    let broken = rules.replace("(hitl_oldest_pending_age_seconds) > 900", "(hitl_oldest_pending_age_seconds) > 3600");
    assert_ne!(broken, rules, "the planted change applies");
    std::fs::write(dir.path().join("alerts.yml"), broken).unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("tests/or02_hitl.yml"), read("ops/prometheus/tests/or02_hitl.yml")).unwrap();
    let report = promtool_test(&dir.path().join("tests"), "or02_hitl.yml").expect_err("the weakened rule must fail");
    assert!(report.contains("AutobizHitlOldestPending"), "promtool names the alert: {report}");
}

#[test]
fn p1_or01_every_alert_links_a_runbook_that_names_it_back() {
    let index = read("docs/runbooks/README.md");
    for rule in alerts() {
        let id = rule.labels.get("runbook").unwrap_or_else(|| panic!("{} has no runbook label", rule.alert));
        let url = rule.annotations.get("runbook_url").unwrap_or_else(|| panic!("{} has no runbook_url", rule.alert));
        let file = Path::new(url).file_name().unwrap().to_str().unwrap();
        assert!(file.starts_with(&format!("{id}-")), "{}: label {id} but link {url}", rule.alert);
        let page = read(url);
        assert!(page.starts_with(&format!("# {id}:")), "{url} is titled with its id");
        assert!(page.contains(&format!("`{}`", rule.alert)), "{url} names the alert {}", rule.alert);
        assert!(page.contains("## Diagnose") && page.contains("## Repair"), "{url} has Diagnose and Repair");
        assert!(page.contains("`autobiz "), "{url} gives the autobiz commands");
        assert!(index.contains(file), "docs/runbooks/README.md lists {file}");
        for annotation in ["summary", "runbook_url"] {
            assert!(rule.annotations.contains_key(annotation), "{} lacks {annotation}", rule.alert);
        }
    }
    // RB-01..RB-05 all exist and are reachable from some alert.
    let linked: BTreeSet<String> = alerts().iter().map(|r| r.labels["runbook"].clone()).collect();
    let expected: BTreeSet<String> = (1..=5).map(|n| format!("RB-0{n}")).collect();
    let pages: BTreeSet<String> = std::fs::read_dir(root().join("docs/runbooks"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str().and_then(|n| n.get(..5)).map(str::to_owned))
        .filter(|n| n.starts_with("RB-"))
        .collect();
    assert_eq!(pages, expected, "docs/runbooks holds RB-01..RB-05");
    assert_eq!(linked, expected, "every runbook is linked from an alert");
}

#[test]
fn p1_or06_rules_and_panels_read_only_series_of_the_metrics_contract() {
    let contract = contract();
    let names: BTreeSet<&str> = contract.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), contract.len(), "metric names are unique");
    for m in &contract {
        assert!(matches!(m.kind.as_str(), "counter" | "gauge" | "histogram"), "{}: type {}", m.name, m.kind);
        assert!(matches!(m.exporter.as_str(), "serve" | "soak" | "deploy"), "{}: exporter {}", m.name, m.exporter);
        assert_eq!(
            m.kind == "counter",
            m.name.ends_with("_total"),
            "{}: counters and only counters end in _total",
            m.name
        );
        assert!(!m.help.is_empty(), "{} has help", m.name);
        assert_eq!(m.issue.is_some(), !m.exported, "{}: a metric not exported yet names its issue, only then", m.name);
        for pii in ["email", "customer", "card", "phone", "name"] {
            assert!(!m.labels.iter().any(|l| l.contains(pii)), "{} has a PII label", m.name);
        }
    }
    let mut read_by: Vec<(String, String)> = Vec::new();
    for rule in alerts() {
        read_by.extend(series_of(&rule.expr).into_iter().map(|s| (s, format!("alert {}", rule.alert))));
    }
    let dashboard = dashboard();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            read_by.extend(series_of(expr).into_iter().map(|s| (s, format!("panel {}", panel["title"]))));
        }
    }
    assert!(read_by.len() >= 15, "the parser found the series: {read_by:?}");
    for (series, who) in &read_by {
        assert!(names.contains(series.as_str()), "{who} reads {series}, which ops/metrics.toml does not list");
    }
}

#[test]
fn p1_or06_the_series_parser_ignores_labels_functions_and_grouping() {
    let got = series_of(r#"sum by (tenant, kind) (increase(drift_case_opened_total{tenant=~"$tenant"}[1h])) > 0"#);
    assert_eq!(got, BTreeSet::from(["drift_case_opened_total".to_owned()]));
    let got = series_of("(max_over_time(gate_pass_rate[1d]) - gate_pass_rate) > 0.05 and on (gate) up");
    assert_eq!(got, BTreeSet::from(["gate_pass_rate".to_owned(), "up".to_owned()]));
    let got = series_of("sum by (workflow) (increase(run_cost_histogram_sum[1d]))");
    assert_eq!(got, BTreeSet::from(["run_cost_histogram".to_owned()]));
}

#[test]
fn p1_or01_the_dashboard_is_a_grafana_dashboard_with_six_concerns() {
    let d = dashboard();
    assert_eq!(d["uid"], "autobiz-overview");
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let titles: Vec<&str> = panels(&d).iter().filter_map(|p| p["title"].as_str()).collect();
    assert_eq!(
        titles,
        [
            "Gate pass rates",
            "HITL backlog",
            "Circuit breaker states",
            "Reconciliation queue",
            "Invariant violations",
            "Cost attribution"
        ]
    );
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel ids are unique");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{} has a position", p["title"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{} uses the datasource variable", p["title"]);
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{} has queries", p["title"]);
    }
}
