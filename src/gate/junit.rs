//! The gate's input: nextest's JUnit report (`target/nextest/<profile>/junit.xml`).
//!
//! ```xml
//! <testsuites name="nextest-run" tests="4" failures="1" errors="1">
//!   <testsuite name="autobiz" tests="4">
//!     <testcase name="gate::tests::p1_t18_all_pass" classname="autobiz"/>
//!     <testcase name="..."><failure type="test failure">...</failure></testcase>
//!     <testcase name="..."><error type="...">...</error></testcase>
//!     <testcase name="..."><skipped/></testcase>
//!   </testsuite>
//! </testsuites>
//! ```
//!
//! A testcase is `Failed` when a `<failure>` or `<error>` is its direct child,
//! `Skipped` for a direct `<skipped>`, else `Passed`. nextest's retry records
//! (`<flakyFailure>`, `<rerunFailure>`, ...) are not direct outcomes: a test
//! that failed and then passed on retry is reported by nextest as passed with
//! a `<flakyFailure>` child, and one that kept failing carries a `<failure>`.
//!
//! Anything that is not well-formed, or not this shape (a testcase outside a
//! testsuite, a suite or case without a name, no `<testsuites>` root), is
//! [`JunitError`] with the code `RESULTS_MALFORMED`: the gate never guesses.
//!
//! [`requirement_id`] reads the requirement a test covers from its name,
//! following the repository's naming convention (`p1_t31_...` is P1-T31).

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use thiserror::Error;

use super::Outcome;
use crate::report::CliError;

/// One testcase of a JUnit report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JunitCase {
    /// The `<testsuite name>`: nextest's binary id (`autobiz`, `autobiz-kernel::executor`).
    pub binary: String,
    /// The `<testcase name>`: the test's path within the binary.
    pub test_name: String,
    pub outcome: Outcome,
}

/// A results file the gate cannot read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JunitError {
    #[error("malformed JUnit results at byte {position}: {message}")]
    Malformed { position: u64, message: String },
}

impl JunitError {
    /// The stable code: `RESULTS_MALFORMED`.
    pub fn code(&self) -> &'static str {
        match self {
            JunitError::Malformed { .. } => "RESULTS_MALFORMED",
        }
    }
}

impl From<JunitError> for CliError {
    fn from(e: JunitError) -> Self {
        CliError::input(e.code(), e.to_string())
    }
}

/// Parse a JUnit report into its testcases, in document order.
pub fn parse(xml: &str) -> Result<Vec<JunitCase>, JunitError> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().expand_empty_elements = true;
    reader.config_mut().check_end_names = true;
    let malformed =
        |reader: &Reader<&[u8]>, message: String| JunitError::Malformed { position: reader.buffer_position(), message };

    let mut cases = Vec::new();
    // Open element names, outermost first.
    let mut open: Vec<String> = Vec::new();
    let mut suite: Option<String> = None;
    let mut case: Option<JunitCase> = None;
    let mut seen_root = false;
    loop {
        let event = reader.read_event().map_err(|e| malformed(&reader, e.to_string()))?;
        match event {
            Event::Start(start) => {
                let name = element_name(&start);
                match (open.len(), name.as_str()) {
                    (0, "testsuites") if !seen_root => seen_root = true,
                    (0, other) => return Err(malformed(&reader, format!("unexpected root element <{other}>"))),
                    (1, "testsuite") => {
                        suite = Some(required_attribute(&start, "name").map_err(|m| malformed(&reader, m))?);
                    }
                    (2, "testcase") if open[1] == "testsuite" => {
                        let test_name = required_attribute(&start, "name").map_err(|m| malformed(&reader, m))?;
                        let binary = suite.clone().unwrap_or_default();
                        case = Some(JunitCase { binary, test_name, outcome: Outcome::Passed });
                    }
                    (3, "failure" | "error") if open[2] == "testcase" => {
                        if let Some(c) = case.as_mut() {
                            c.outcome = Outcome::Failed;
                        }
                    }
                    (3, "skipped") if open[2] == "testcase" => {
                        if let Some(c) = case.as_mut()
                            && c.outcome == Outcome::Passed
                        {
                            c.outcome = Outcome::Skipped;
                        }
                    }
                    (_, "testcase") => {
                        return Err(malformed(&reader, "<testcase> outside a <testsuite>".to_owned()));
                    }
                    (_, "testsuite") => {
                        return Err(malformed(&reader, "<testsuite> outside <testsuites>".to_owned()));
                    }
                    _ => {}
                }
                open.push(name);
            }
            Event::End(_) => {
                // check_end_names has already matched the name against `open`.
                match open.pop().as_deref() {
                    Some("testcase") if open.len() == 2 => cases.extend(case.take()),
                    Some("testsuite") if open.len() == 1 => suite = None,
                    _ => {}
                }
            }
            Event::Text(text) if open.is_empty() && !text.trim().is_empty() => {
                return Err(malformed(&reader, "text outside the root element".to_owned()));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !open.is_empty() {
        return Err(malformed(&reader, format!("unexpected end of input inside <{}>", open.join("><"))));
    }
    if !seen_root {
        return Err(malformed(&reader, "no <testsuites> element".to_owned()));
    }
    Ok(cases)
}

fn element_name(start: &BytesStart<'_>) -> String {
    let name = start.local_name();
    AsRef::<str>::as_ref(&name).to_owned()
}

fn required_attribute(start: &BytesStart<'_>, name: &str) -> Result<String, String> {
    let element = element_name(start);
    let attribute = start
        .try_get_attribute(name)
        .map_err(|e| format!("<{element}>: {e}"))?
        .ok_or_else(|| format!("<{element}> without a {name} attribute"))?;
    let value = attribute.normalized_value(XmlVersion::Implicit1_0).map_err(|e| format!("<{element} {name}>: {e}"))?;
    if value.trim().is_empty() {
        return Err(format!("<{element}> with an empty {name}"));
    }
    Ok(value.into_owned())
}

/// The requirement id a test name states, if any, by the repository's
/// convention: the test's own name (after the last `::`) starts with the id
/// in lower case, `_` for `-`.
///
/// | test name | requirement |
/// | --- | --- |
/// | `p1_t31_...` | `P1-T31` |
/// | `p1_t01_neg_...` | `P1-T01-NEG` |
/// | `p1_t_rk06a_...` | `P1-T-RK06a` |
/// | `p1_t_cc01_...` | `P1-T-CC01` |
/// | `p1_t_exit_05_...` | `P1-T-EXIT-05` |
/// | `p1_h09_...` | `P1-H09` |
/// | `inv07_...` | `INV-07` |
pub fn requirement_id(test_name: &str) -> Option<String> {
    // The id is on the test function, which may sit inside a module of its
    // own (`p1_t11_duplicate::sqlite` for a test run on both backends):
    // the innermost segment that carries an id names it.
    test_name.rsplit("::").find_map(segment_id)
}

fn segment_id(name: &str) -> Option<String> {
    let mut parts = name.split('_');
    let first = parts.next()?;
    if let Some(digits) = first.strip_prefix("inv") {
        return all_digits(digits).then(|| format!("INV-{digits}"));
    }
    if first != "p1" {
        return None;
    }
    let second = parts.next()?;
    if second == "t" {
        // P1-T-<LETTERS><digits>[suffix] or P1-T-<LETTERS>-<digits>.
        let third = parts.next()?;
        if let Some(code) = lettered(third) {
            return Some(format!("P1-T-{code}"));
        }
        let fourth = parts.next()?;
        return (all_letters(third) && all_digits(fourth))
            .then(|| format!("P1-T-{}-{fourth}", third.to_ascii_uppercase()));
    }
    let code = lettered(second)?;
    if second.starts_with('t') && parts.next() == Some("neg") {
        return Some(format!("P1-{code}-NEG"));
    }
    Some(format!("P1-{code}"))
}

/// `rk06a` -> `RK06a`: letters, digits, at most one trailing lower-case letter.
fn lettered(part: &str) -> Option<String> {
    let letters = part.len() - part.trim_start_matches(|c: char| c.is_ascii_lowercase()).len();
    let rest = &part[letters..];
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let suffix = &rest[digits..];
    (letters > 0 && digits > 0 && suffix.len() <= 1 && suffix.chars().all(|c| c.is_ascii_lowercase()))
        .then(|| format!("{}{}{suffix}", part[..letters].to_ascii_uppercase(), &rest[..digits]))
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

fn all_letters(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nextest's layout, with each kind of outcome (and a retried test).
    const RESULTS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="6" failures="1" errors="1" uuid="0" timestamp="2025-01-01T00:00:00Z" time="1.0">
    <testsuite name="autobiz" tests="4" disabled="1" errors="1" failures="1">
        <testcase name="gate::tests::p1_t18_passes" classname="autobiz" timestamp="2025-01-01T00:00:00Z" time="0.01">
            <system-out>ok &amp; done</system-out>
        </testcase>
        <testcase name="gate::tests::p1_t18_fails" classname="autobiz" time="0.02">
            <failure type="test failure">thread panicked at src/gate/mod.rs:1:1</failure>
            <system-err>assertion failed</system-err>
        </testcase>
        <testcase name="gate::tests::inv08_skipped" classname="autobiz" time="0.00"><skipped/></testcase>
        <testcase name="gate::tests::p1_t_exit_05_errored" classname="autobiz" time="0.03">
            <error type="SIGSEGV">process crashed</error>
        </testcase>
    </testsuite>
    <testsuite name="autobiz-kernel::executor" tests="2" disabled="0" errors="0" failures="0">
        <testcase name="p1_t01_valid_call" classname="autobiz-kernel::executor" time="0.1"/>
        <testcase name="p1_t08_retried" classname="autobiz-kernel::executor" time="0.2">
            <flakyFailure type="test failure" message="first attempt">boom</flakyFailure>
        </testcase>
    </testsuite>
</testsuites>
"#;

    fn case(binary: &str, test_name: &str, outcome: Outcome) -> JunitCase {
        JunitCase { binary: binary.to_owned(), test_name: test_name.to_owned(), outcome }
    }

    #[test]
    fn p1_t18_junit_outcomes_are_read_per_testcase() {
        let cases = parse(RESULTS).unwrap();
        assert_eq!(
            cases,
            vec![
                case("autobiz", "gate::tests::p1_t18_passes", Outcome::Passed),
                case("autobiz", "gate::tests::p1_t18_fails", Outcome::Failed),
                case("autobiz", "gate::tests::inv08_skipped", Outcome::Skipped),
                case("autobiz", "gate::tests::p1_t_exit_05_errored", Outcome::Failed),
                case("autobiz-kernel::executor", "p1_t01_valid_call", Outcome::Passed),
                case("autobiz-kernel::executor", "p1_t08_retried", Outcome::Passed),
            ]
        );
    }

    #[test]
    fn p1_t18_an_empty_run_is_an_empty_list() {
        assert_eq!(parse(r#"<testsuites name="nextest-run" tests="0"/>"#).unwrap(), vec![]);
        let empty_suite = r#"<testsuites><testsuite name="autobiz" tests="0"></testsuite></testsuites>"#;
        assert_eq!(parse(empty_suite).unwrap(), vec![]);
    }

    #[test]
    fn p1_t18_malformed_results_are_results_malformed() {
        let malformed = [
            ("truncated", &RESULTS[..RESULTS.len() / 2]),
            ("mismatched end tag", r#"<testsuites><testsuite name="a"><testcase name="t"></testsuite></testsuites>"#),
            ("unclosed root", r#"<testsuites><testsuite name="a"></testsuite>"#),
            ("empty", ""),
            ("not xml", "test result: ok. 3 passed; 0 failed"),
            ("wrong root", r#"<testsuite name="a"><testcase name="t"/></testsuite>"#),
            ("case outside a suite", r#"<testsuites><testcase name="t"/></testsuites>"#),
            ("suite without a name", r#"<testsuites><testsuite><testcase name="t"/></testsuite></testsuites>"#),
            ("case without a name", r#"<testsuites><testsuite name="a"><testcase/></testsuite></testsuites>"#),
            ("two roots", r#"<testsuites></testsuites><testsuites></testsuites>"#),
            ("bad attribute", r#"<testsuites><testsuite name="a><testcase name="t"/></testsuite></testsuites>"#),
        ];
        for (what, xml) in malformed {
            let e = parse(xml).expect_err(what);
            assert_eq!(e.code(), "RESULTS_MALFORMED", "{what}");
            let cli: CliError = e.into();
            assert_eq!((cli.code.as_str(), cli.exit), ("RESULTS_MALFORMED", crate::report::exit::BAD_INPUT), "{what}");
        }
    }

    #[test]
    fn p1_t18_requirement_ids_follow_the_naming_convention() {
        let cases = [
            ("p1_t31_tenant_transaction", Some("P1-T31")),
            ("p1_t_rk06a_transaction_scope", Some("P1-T-RK06a")),
            ("p1_h09_webhook_signature", Some("P1-H09")),
            ("p1_t_cc01_check", Some("P1-T-CC01")),
            ("p1_t01_neg_unknown_field", Some("P1-T01-NEG")),
            ("inv07_receipts", Some("INV-07")),
            ("inv08", Some("INV-08")),
            ("p1_t_exit_05_lcb", Some("P1-T-EXIT-05")),
            ("p1_t18", Some("P1-T18")),
            ("gate::tests::p1_t18_all_pass", Some("P1-T18")),
            ("p1_t41_p1_t30_combined", Some("P1-T41")),
            ("p1_t01_negative_thinking", Some("P1-T01")),
            ("invalid_values_are_reported", None),
            ("inv_07", None),
            ("p1_t_cc_diagnostics", None),
            ("p1_t_rk06ab_x", None),
            ("p1_t", None),
            ("p1_", None),
            ("p2_t01_x", None),
            ("some_test", None),
            ("", None),
        ];
        for (name, expected) in cases {
            assert_eq!(requirement_id(name).as_deref(), expected, "{name}");
        }
    }
}
