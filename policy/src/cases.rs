//! Conformance cases in the `fixtures/cases/` format (see `fixtures/README.md`): a folder with
//! `config.yaml` and either `packets.jsonl` + `expected.jsonl`, or `expected-error.json`. Any
//! policy, native or a module, can be run against them: the caller judges, this module reads
//! the case and compares.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::json::{parse_packet, verdict_json};
use crate::packet::Verdict;
use crate::table::Catalog;

/// One case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The folder's name.
    pub name: String,
    /// The folder.
    pub dir: PathBuf,
    /// The configuration text.
    pub config: String,
    /// What the policy must answer.
    pub expect: Expect,
}

/// What a case expects.
#[derive(Debug, Clone)]
pub enum Expect {
    /// One verdict line per packet line.
    Verdicts {
        /// The packet lines.
        packets: Vec<String>,
        /// The expected verdict lines, parsed.
        verdicts: Vec<Value>,
    },
    /// The configuration must be refused with this error.
    Error(ExpectedError),
}

/// A refusal a case expects: `object`, `field` and `value` must be equal, `message` a part of
/// the error's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedError {
    /// The object.
    pub object: Option<String>,
    /// The field.
    pub field: Option<String>,
    /// The value.
    pub value: Option<String>,
    /// A part of the message.
    pub message: String,
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn non_empty_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim().is_empty())
}

impl Case {
    /// Reads the case in `dir`.
    pub fn load(dir: &Path) -> Result<Case, String> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Case::parse(&name, dir, |file| {
            let path = dir.join(file);
            path.exists().then(|| read(&path)).transpose()
        })
    }

    /// Reads a case from its files, wherever they are kept: `file` answers the text of one
    /// of `config.yaml`, `packets.jsonl`, `expected.jsonl` or `expected-error.json`, `None`
    /// when the case has no such file. Errors name files as if they were in `dir`.
    pub fn parse(
        name: &str,
        dir: &Path,
        file: impl Fn(&str) -> Result<Option<String>, String>,
    ) -> Result<Case, String> {
        let need = |f: &str| -> Result<String, String> {
            file(f)?.ok_or_else(|| format!("{}: missing", dir.join(f).display()))
        };
        let config = need("config.yaml")?;
        let expect = if let Some(text) = file("expected-error.json")? {
            let path = dir.join("expected-error.json");
            let value: Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
            Expect::Error(ExpectedError {
                object: text("object"),
                field: text("field"),
                value: text("value"),
                message: text("message").unwrap_or_default(),
            })
        } else {
            let packets = non_empty_lines(&need("packets.jsonl")?)
                .map(str::to_owned)
                .collect();
            let expected_path = dir.join("expected.jsonl");
            let verdicts = non_empty_lines(&need("expected.jsonl")?)
                .enumerate()
                .map(|(n, l)| {
                    serde_json::from_str(l)
                        .map_err(|e| format!("{}:{}: {e}", expected_path.display(), n + 1))
                })
                .collect::<Result<_, _>>()?;
            Expect::Verdicts { packets, verdicts }
        };
        Ok(Case {
            name: name.to_owned(),
            dir: dir.to_owned(),
            config,
            expect,
        })
    }

    /// Reads every case folder under `dir`, in name order.
    pub fn load_all(dir: &Path) -> Result<Vec<Case>, String> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("config.yaml").is_file())
            .collect();
        dirs.sort();
        dirs.iter().map(|d| Case::load(d)).collect()
    }

    /// Runs the case's packets through `judge` (which gets the packets that parse, in order)
    /// and lists every line whose answer differs from the expected one. `catalog` is the
    /// configuration's, as the policy knows it.
    pub fn check_verdicts(
        &self,
        catalog: &Catalog,
        judge: impl FnOnce(&[crate::Packet]) -> Vec<Verdict>,
    ) -> Vec<String> {
        let Expect::Verdicts { packets, verdicts } = &self.expect else {
            return vec!["the configuration was accepted, but the case expects it refused".into()];
        };
        let parsed: Vec<Result<crate::Packet, String>> =
            packets.iter().map(|l| parse_packet(l, catalog)).collect();
        let good: Vec<crate::Packet> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().copied())
            .collect();
        let answers = judge(&good);
        if answers.len() != good.len() {
            return vec![format!(
                "{} verdicts for {} packets",
                answers.len(),
                good.len()
            )];
        }
        let mut answers = answers.into_iter();
        let mut problems = Vec::new();
        if packets.len() != verdicts.len() {
            problems.push(format!(
                "{} packets but {} expected verdicts",
                packets.len(),
                verdicts.len()
            ));
        }
        for (n, ((line, packet), want)) in packets.iter().zip(&parsed).zip(verdicts).enumerate() {
            let got = match packet {
                Ok(_) => answers
                    .next()
                    .map(|v| verdict_json(catalog, v))
                    .unwrap_or(Value::Null),
                Err(e) => serde_json::json!({ "error": e }),
            };
            if &got != want {
                problems.push(format!(
                    "line {}: {line}\n    expected {want}\n    got      {got}",
                    n + 1
                ));
            }
        }
        problems
    }

    /// Compares a refusal with the one the case expects; `None` when the configuration was
    /// accepted.
    pub fn check_error(&self, got: Option<&ExpectedError>) -> Vec<String> {
        let Expect::Error(want) = &self.expect else {
            return match got {
                Some(e) => vec![format!("the configuration was refused: {}", e.message)],
                None => Vec::new(),
            };
        };
        let Some(got) = got else {
            return vec!["the configuration was accepted, but must be refused".into()];
        };
        let mut problems = Vec::new();
        for (key, w, g) in [
            ("object", &want.object, &got.object),
            ("field", &want.field, &got.field),
            ("value", &want.value, &got.value),
        ] {
            if w != g {
                problems.push(format!(
                    "{key}: expected {w:?}, got {g:?} in `{}`",
                    got.message
                ));
            }
        }
        if !got.message.contains(&want.message) {
            problems.push(format!(
                "message: expected to contain {:?}, got {:?}",
                want.message, got.message
            ));
        }
        problems
    }
}
