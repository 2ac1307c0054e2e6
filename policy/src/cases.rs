//! Conformance cases in the `fixtures/cases/` format (see `fixtures/README.md`): a folder with
//! `config.yaml` and either `packets.jsonl` + `expected.jsonl`, or `expected-error.json`. Any
//! policy, native or a module, can be run against them: the caller judges, this module reads
//! the case and compares.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::catalog::Catalog;
use crate::config::ConfigError;
use crate::json::{parse_packet, verdict_json};
use crate::packet::Verdict;

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
    /// The configuration must be refused with this error: its `object`, `field` and
    /// `value` equal, its `message` a part of the refusal's text.
    Error(ConfigError),
}

/// A case that could not be read: the file, the line when there is one, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct CaseError {
    /// The file (or folder).
    pub path: PathBuf,
    /// The 1-based line, for a file of lines.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl CaseError {
    /// An error about `path`.
    pub fn new(path: &Path, message: impl std::fmt::Display) -> Self {
        CaseError {
            path: path.to_owned(),
            line: None,
            message: message.to_string(),
        }
    }
}

fn read(path: &Path) -> Result<String, CaseError> {
    fs::read_to_string(path).map_err(|e| CaseError::new(path, e))
}

fn non_empty_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim().is_empty())
}

impl Case {
    /// Reads the case in `dir`.
    pub fn load(dir: &Path) -> Result<Case, CaseError> {
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
        file: impl Fn(&str) -> Result<Option<String>, CaseError>,
    ) -> Result<Case, CaseError> {
        let need = |f: &str| -> Result<String, CaseError> {
            file(f)?.ok_or_else(|| CaseError::new(&dir.join(f), "missing"))
        };
        let config = need("config.yaml")?;
        let expect = if let Some(text) = file("expected-error.json")? {
            let path = dir.join("expected-error.json");
            let value: Value = serde_json::from_str(&text).map_err(|e| CaseError::new(&path, e))?;
            let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
            Expect::Error(ConfigError {
                file: None,
                document: None,
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
                    serde_json::from_str(l).map_err(|e| CaseError {
                        line: Some(n + 1),
                        ..CaseError::new(&expected_path, e)
                    })
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
    pub fn load_all(dir: &Path) -> Result<Vec<Case>, CaseError> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| CaseError::new(dir, e))?
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
        let parsed: Vec<Result<crate::Packet, crate::json::PacketError>> =
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
                Err(e) => serde_json::json!({ "error": e.to_string() }),
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
    pub fn check_error(&self, got: Option<&ConfigError>) -> Vec<String> {
        let Expect::Error(want) = &self.expect else {
            return match got {
                Some(e) => vec![format!("the configuration was refused: {e}")],
                None => Vec::new(),
            };
        };
        let text = got.map(ToString::to_string).unwrap_or_default();
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
                problems.push(format!("{key}: expected {w:?}, got {g:?} in `{text}`"));
            }
        }
        if !text.contains(&want.message) {
            problems.push(format!(
                "message: expected to contain {:?}, got {:?}",
                want.message, text
            ));
        }
        problems
    }
}
