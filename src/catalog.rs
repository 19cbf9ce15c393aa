//! The test catalogue, `suites/catalog.toml`: one entry per test id of the
//! requirement documents, and the stage table the harness runs.
//!
//! Traceability must be total, so the catalogue is checked against the tests
//! nextest lists ([`Catalog::check`]): an entry bound to nothing, a binding
//! that matches no test, and a test whose name carries an id the catalogue
//! lacks (or that the entry of that id does not bind) are problems. Entries
//! whose implementation is delivered by a later issue say so (`status =
//! "planned"`, `issue = N`): they may be unbound, are reported as planned and
//! are never counted as covered. Structural errors (TOML, duplicate ids, an
//! unknown stage or priority, a stage missing from the table) refuse the file
//! outright with `CATALOG_INVALID`.
//!
//! A binding is a glob (`*` matches any run of characters) over a test's own
//! name (the part after the last `::`), or over the full `BINARY NAME` id
//! when the pattern holds a space or `::`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::gate::Priority;
use crate::gate::junit::requirement_id;
use crate::report::CliError;

/// The catalogue's default location, relative to the repository root.
pub const DEFAULT_PATH: &str = "suites/catalog.toml";

/// The pipeline's stages, in the order the gate runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Stage {
    Hygiene,
    Unit,
    IntegrationInternal,
    IntegrationExternal,
    Golden,
}

impl Stage {
    pub const ALL: [Stage; 5] =
        [Stage::Hygiene, Stage::Unit, Stage::IntegrationInternal, Stage::IntegrationExternal, Stage::Golden];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Hygiene => "hygiene",
            Stage::Unit => "unit",
            Stage::IntegrationInternal => "integration_internal",
            Stage::IntegrationExternal => "integration_external",
            Stage::Golden => "golden",
        }
    }
}

/// One row of the stage table. Hygiene runs once; every other stage runs
/// the gate's `--runs` times.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDecl {
    /// The nextest filterset of the stage (hygiene: built from its entries).
    #[serde(default)]
    pub filter: Option<String>,
    /// No tests yet: the stage is reported as planned and not run.
    #[serde(default)]
    pub planned: bool,
    /// The issue that delivers a planned stage.
    #[serde(default)]
    pub issue: Option<u32>,
    /// Wall-clock limit of one run of the stage, e.g. `20m`.
    #[serde(default)]
    pub timeout: Option<String>,
}

impl StageDecl {
    pub fn timeout(&self) -> Result<std::time::Duration, CliError> {
        let text = self.timeout.as_deref().unwrap_or("30m");
        humantime::parse_duration(text)
            .map_err(|e| CliError::input("CATALOG_INVALID", format!("stage timeout `{text}`: {e}")))
    }
}

/// Whether an entry's tests exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Active,
    Planned,
}

/// One test id of the requirement documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: String,
    pub title: String,
    pub priority: Priority,
    pub stage: Stage,
    #[serde(default)]
    pub oracles: Vec<String>,
    #[serde(default)]
    pub requirements: Vec<String>,
    #[serde(default)]
    pub tasks: Vec<String>,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub issue: Option<u32>,
    /// Bindings: globs over test names (see the module documentation).
    pub tests: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    version: u32,
    stages: BTreeMap<Stage, StageDecl>,
    #[serde(default, rename = "test")]
    tests: Vec<Entry>,
}

/// A test as nextest lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListedTest {
    /// nextest's binary id: `autobiz`, `autobiz-kernel::executor`.
    pub binary_id: String,
    /// `lib`, `test`, `bin`, ...
    pub kind: String,
    /// The test's path within its binary.
    pub name: String,
}

impl ListedTest {
    /// `BINARY NAME`, nextest's own display of a test, unique in a workspace.
    pub fn full_id(&self) -> String {
        format!("{} {}", self.binary_id, self.name)
    }
}

/// A checked, loaded catalogue.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub stages: BTreeMap<Stage, StageDecl>,
    pub entries: Vec<Entry>,
}

/// One traceability problem found by [`Catalog::check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub code: &'static str,
    pub message: String,
}

/// What [`Catalog::check`] found.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogCheck {
    pub entries: usize,
    pub entries_bound: usize,
    /// `(id, issue)` of the planned entries: reported, not covered.
    pub planned: Vec<(String, Option<u32>)>,
    pub tests: usize,
    /// Tests bound by at least one entry.
    pub tests_mapped: usize,
    /// Tests without an id (plumbing): run and reported, counted as P1.
    pub plumbing: usize,
    pub problems: Vec<Problem>,
}

impl Catalog {
    /// Read and validate `path` (exit 2 with `CATALOG_INVALID` or `CATALOG_IO`).
    pub fn load(path: &Path) -> Result<Catalog, CliError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::input("CATALOG_IO", format!("cannot read the catalogue {}: {e}", path.display())))?;
        Catalog::parse(&text).map_err(|mut e| {
            e.message = format!("{}: {}", path.display(), e.message);
            e
        })
    }

    pub fn parse(text: &str) -> Result<Catalog, CliError> {
        let invalid = |m: String| CliError::input("CATALOG_INVALID", m);
        let file: CatalogFile = toml::from_str(text).map_err(|e| invalid(e.to_string().trim().to_owned()))?;
        if file.version != 1 {
            return Err(invalid(format!("catalogue version {} is not supported (1 is)", file.version)));
        }
        for stage in Stage::ALL {
            let Some(decl) = file.stages.get(&stage) else {
                return Err(invalid(format!("the stage table has no [stages.{}]", stage.as_str())));
            };
            if decl.planned && decl.issue.is_none() {
                return Err(invalid(format!("stage {} is planned but names no issue", stage.as_str())));
            }
            decl.timeout()?;
        }
        let mut seen = BTreeSet::new();
        for entry in &file.tests {
            if entry.id.trim().is_empty() {
                return Err(invalid("an entry with an empty id".to_owned()));
            }
            if !seen.insert(entry.id.as_str()) {
                return Err(invalid(format!("duplicate test id {}", entry.id)));
            }
            if entry.status == Status::Planned && entry.issue.is_none() {
                return Err(invalid(format!("{} is planned but names no issue", entry.id)));
            }
            if let Some(bad) = entry.tests.iter().find(|p| p.trim().is_empty()) {
                return Err(invalid(format!("{} has an empty binding `{bad}`", entry.id)));
            }
        }
        Ok(Catalog { stages: file.stages, entries: file.tests })
    }

    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// The entries that bind `test`.
    pub fn entries_for<'a>(&'a self, test: &'a ListedTest) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.tests.iter().any(|p| binds(p, test)))
    }

    /// A test's priority: the strictest of the entries binding it; P1 for plumbing.
    pub fn priority_of(&self, test: &ListedTest) -> Priority {
        self.entries_for(test).map(|e| e.priority).min().unwrap_or(Priority::P1)
    }

    /// The nextest filterset selecting the hygiene entries' tests, if any.
    pub fn hygiene_filter(&self) -> Option<String> {
        let parts: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.stage == Stage::Hygiene && e.status == Status::Active)
            .flat_map(|e| e.tests.iter())
            .map(|p| binding_filter(p))
            .collect();
        (!parts.is_empty()).then(|| parts.join(" | "))
    }

    /// The nextest filterset of `stage`; `None` when it selects nothing.
    pub fn stage_filter(&self, stage: Stage) -> Option<String> {
        let hygiene = self.hygiene_filter();
        if stage == Stage::Hygiene {
            return hygiene;
        }
        let own = self.stages.get(&stage)?.filter.clone()?;
        Some(match hygiene {
            Some(h) => format!("({own}) - ({h})"),
            None => own,
        })
    }

    /// Check traceability against every test nextest lists.
    pub fn check(&self, tests: &[ListedTest]) -> CatalogCheck {
        let mut problems = Vec::new();
        let mut entries_bound = 0;
        let mut planned = Vec::new();
        for entry in &self.entries {
            if entry.status == Status::Planned {
                planned.push((entry.id.clone(), entry.issue));
            }
            let mut bound_any = false;
            for pattern in &entry.tests {
                if tests.iter().any(|t| binds(pattern, t)) {
                    bound_any = true;
                } else {
                    problems.push(Problem {
                        code: "BINDING_MATCHES_NOTHING",
                        message: format!("{}: the binding `{pattern}` matches no test", entry.id),
                    });
                }
            }
            if bound_any {
                entries_bound += 1;
            } else if entry.status == Status::Active && entry.tests.is_empty() {
                problems.push(Problem {
                    code: "ENTRY_UNBOUND",
                    message: format!("{}: bound to nothing (bind a test, or mark it planned with its issue)", entry.id),
                });
            }
        }
        let mut tests_mapped = 0;
        let mut plumbing = 0;
        for test in tests {
            let binding: Vec<&Entry> = self.entries_for(test).collect();
            if !binding.is_empty() {
                tests_mapped += 1;
            }
            match requirement_id(&test.name) {
                None if binding.is_empty() => plumbing += 1,
                None => {}
                Some(id) => match self.entry(&id) {
                    None => problems.push(Problem {
                        code: "TEST_ID_NOT_IN_CATALOG",
                        message: format!("{}: names {id}, which the catalogue lacks", test.full_id()),
                    }),
                    Some(entry) if !binding.iter().any(|e| e.id == entry.id) => problems.push(Problem {
                        code: "TEST_NOT_BOUND_TO_ITS_ID",
                        message: format!("{}: names {id}, but the entry {id} does not bind it", test.full_id()),
                    }),
                    Some(_) => {}
                },
            }
        }
        CatalogCheck {
            entries: self.entries.len(),
            entries_bound,
            planned,
            tests: tests.len(),
            tests_mapped,
            plumbing,
            problems,
        }
    }
}

/// Does the binding `pattern` select `test`?
pub fn binds(pattern: &str, test: &ListedTest) -> bool {
    if pattern.contains(' ') || pattern.contains("::") {
        glob(pattern, &test.full_id())
    } else {
        // Any segment of the path: the test function may sit in a module of
        // its own (`p1_t11_duplicate::sqlite`).
        test.name.split("::").any(|segment| glob(pattern, segment))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = parts.split_first().unwrap_or((&"", &[]));
    let Some(mut text) = text.strip_prefix(first) else { return false };
    let Some((last, middle)) = rest.split_last() else { return text.is_empty() };
    for part in middle {
        match text.find(part) {
            Some(at) => text = &text[at + part.len()..],
            None => return false,
        }
    }
    text.ends_with(last)
}

/// A binding as a nextest filterset (`test(/regex/)`).
fn binding_filter(pattern: &str) -> String {
    let escaped: String =
        pattern
            .split('*')
            .map(|part| {
                part.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            c.to_string()
                        } else {
                            format!("\\x{:02x}", c as u32)
                        }
                    })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(".*");
    if pattern.contains(' ') || pattern.contains("::") {
        // nextest matches test() against the name only; keep the name part.
        let name = pattern.rsplit([' ']).next().unwrap_or(pattern);
        return binding_filter(name);
    }
    format!("test(/(^|::){escaped}$/)")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stage table for tests' catalogues (integration_external and golden planned).
    pub(crate) const STAGES: &str = r#"
version = 1
[stages.hygiene]
[stages.unit]
filter = "kind(lib)"
[stages.integration_internal]
filter = "kind(test)"
[stages.integration_external]
planned = true
issue = 5
[stages.golden]
planned = true
issue = 6
"#;

    fn listed(binary: &str, name: &str) -> ListedTest {
        ListedTest { binary_id: binary.into(), kind: "lib".into(), name: name.into() }
    }

    fn catalog(entries: &str) -> Result<Catalog, CliError> {
        Catalog::parse(&format!("{STAGES}\n{entries}"))
    }

    const ENTRIES: &str = r#"
[[test]]
id = "P1-T01"
title = "schemas"
priority = "P0"
stage = "unit"
tests = ["p1_t01_*"]

[[test]]
id = "P1-T11"
title = "idempotency"
priority = "P0"
stage = "integration_internal"
status = "planned"
issue = 4
tests = []
"#;

    #[test]
    fn p1_t18_glob_matches_whole_names_only() {
        assert!(glob("p1_t01_*", "p1_t01_valid"));
        assert!(!glob("p1_t01_*", "xp1_t01_valid"));
        assert!(glob("a*b*c", "aXXbYYc") && !glob("a*b*c", "aXXbYY"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
        let t = listed("autobiz-kernel::executor", "p1_t01_valid_input");
        assert!(binds("p1_t01_*", &t));
        assert!(binds("autobiz-kernel::executor p1_t01_*", &t));
        assert!(!binds("autobiz p1_t01_*", &t));
    }

    #[test]
    fn p1_t18_a_complete_catalogue_checks_clean_and_counts_planned_as_uncovered() {
        let c = catalog(ENTRIES).unwrap();
        let tests = [listed("autobiz-kernel", "contract::tests::p1_t01_x"), listed("autobiz", "plumbing_test")];
        let check = c.check(&tests);
        assert!(check.problems.is_empty(), "{:?}", check.problems);
        assert_eq!((check.entries, check.entries_bound, check.tests, check.tests_mapped), (2, 1, 2, 1));
        assert_eq!(check.plumbing, 1);
        assert_eq!(check.planned, vec![("P1-T11".to_owned(), Some(4))]);
        assert_eq!(c.priority_of(&tests[0]), Priority::P0);
        assert_eq!(c.priority_of(&tests[1]), Priority::P1);
    }

    #[test]
    fn p1_t18_unbound_entries_dead_bindings_and_unknown_ids_are_problems() {
        let c = catalog(&format!(
            "{ENTRIES}\n[[test]]\nid = \"P1-T02\"\ntitle = \"x\"\npriority = \"P1\"\nstage = \"unit\"\ntests = []\n\
             [[test]]\nid = \"P1-T03\"\ntitle = \"x\"\npriority = \"P1\"\nstage = \"unit\"\ntests = [\"p1_t03_*\"]\n"
        ))
        .unwrap();
        let tests = [
            listed("autobiz-kernel", "p1_t01_x"),
            listed("autobiz-kernel", "p1_t09_not_catalogued"),
            listed("autobiz-kernel", "p1_t11_bound_by_no_one"),
        ];
        let codes: Vec<&str> = c.check(&tests).problems.iter().map(|p| p.code).collect();
        assert_eq!(
            codes,
            ["ENTRY_UNBOUND", "BINDING_MATCHES_NOTHING", "TEST_ID_NOT_IN_CATALOG", "TEST_NOT_BOUND_TO_ITS_ID"]
        );
    }

    #[test]
    fn p1_t18_duplicate_ids_unknown_stages_and_bad_tables_are_refused() {
        let dup = format!(
            "{ENTRIES}\n[[test]]\nid = \"P1-T01\"\ntitle = \"again\"\npriority = \"P1\"\nstage = \"unit\"\ntests = [\"x\"]\n"
        );
        let e = catalog(&dup).unwrap_err();
        assert_eq!((e.code.as_str(), e.exit), ("CATALOG_INVALID", 2));
        assert!(e.message.contains("duplicate test id P1-T01"), "{}", e.message);

        let e = catalog("[[test]]\nid = \"X\"\ntitle = \"x\"\npriority = \"P1\"\nstage = \"smoke\"\ntests = [\"x\"]\n")
            .unwrap_err();
        assert!(e.message.contains("smoke"), "{}", e.message);
        let e = catalog("[[test]]\nid = \"X\"\ntitle = \"x\"\npriority = \"P2\"\nstage = \"unit\"\ntests = [\"x\"]\n")
            .unwrap_err();
        assert!(e.message.contains("P2"), "{}", e.message);
        let e = catalog("[[test]]\nid = \"X\"\ntitle = \"x\"\npriority = \"P1\"\nstage = \"unit\"\nstatus = \"planned\"\ntests = []\n")
            .unwrap_err();
        assert!(e.message.contains("names no issue"), "{}", e.message);
        let e = Catalog::parse("version = 1\n[stages.unit]\n").unwrap_err();
        assert!(e.message.contains("[stages.hygiene]"), "{}", e.message);
        let e = Catalog::parse("version = 1\n[stages.unit]\n[stages.smoke]\n").unwrap_err();
        assert_eq!(e.code, "CATALOG_INVALID");
    }

    #[test]
    fn p1_t18_stage_filters_exclude_hygiene_tests() {
        let hygiene = "[[test]]\nid = \"P1-H09\"\ntitle = \"stack\"\npriority = \"P0\"\nstage = \"hygiene\"\ntests = [\"p1_h09_*\"]\n";
        let c = catalog(hygiene).unwrap();
        assert_eq!(c.hygiene_filter().as_deref(), Some("test(/(^|::)p1_h09_.*$/)"));
        assert_eq!(c.stage_filter(Stage::Unit).as_deref(), Some("(kind(lib)) - (test(/(^|::)p1_h09_.*$/))"));
        let c = catalog(ENTRIES).unwrap();
        assert_eq!((c.stage_filter(Stage::Hygiene), c.stage_filter(Stage::Unit).as_deref()), (None, Some("kind(lib)")));
        assert_eq!(c.stage_filter(Stage::Golden), None);
    }

    #[test]
    fn p1_t18_the_shipped_catalogue_loads() {
        let c = Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_PATH)).unwrap();
        for id in ["P1-H01", "P1-H10", "P1-T01", "P1-T41", "P1-T-CC01", "P1-T-CC04", "P1-T-RK06a", "INV-08"] {
            assert!(c.entry(id).is_some(), "{id} missing");
        }
        assert!(c.entries.iter().all(|e| e.status == Status::Planned || !e.tests.is_empty()));
    }
}
