//! `dataset.name: manifest`: per split a CSV (`path,label`, header row optional) or JSON-lines
//! (`{"path": ..., "label": ...}`) file in the `dataset.path` directory: `train.csv`/`train.jsonl`, and
//! `test.*` (or `val.*`). Paths are relative to the manifest's directory and must stay inside it; labels are
//! class indices, or class names when `dataset.classes` is set. The sample index is the line order. Errors name
//! the manifest and its line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::confine::Root;
use super::image_files::{FileTable, ImageEntry};
use super::DataError;

const EXTENSIONS: &[&str] = &["csv", "jsonl"];
const TEST_STEMS: &[&str] = &["test", "val"];

pub(crate) fn list(dir: &Path, classes: Option<&[String]>) -> Result<FileTable, DataError> {
    let root = Root::new(dir)?;
    let find = |stems: &[&str]| -> Option<PathBuf> {
        stems.iter().find_map(|stem| {
            EXTENSIONS
                .iter()
                .map(|ext| PathBuf::from(format!("{stem}.{ext}")))
                .find(|name| root.given.join(name).is_file())
        })
    };
    let missing = |what: &str| {
        DataError::NotFound {
        name: "manifest".into(),
        missing: what.into(),
        looked: root.given.display().to_string(),
        how_to_get: "write train.csv and test.csv (lines `path,label`, paths relative to the file) or the same as \
                     .jsonl, and set dataset.path to their directory"
            .into(),
    }
    };
    let train_name = find(&["train"]).ok_or_else(|| missing("train.csv or train.jsonl"))?;
    let test_name = find(TEST_STEMS).ok_or_else(|| missing("test.csv, val.csv or the .jsonl"))?;
    let train_rows = read_rows(&root, &train_name)?;
    let test_rows = read_rows(&root, &test_name)?;
    let class_names = match classes {
        Some(list) => list.to_vec(),
        None => {
            let most = train_rows
                .iter()
                .chain(&test_rows)
                .filter_map(|r| r.label.index())
                .max()
                .unwrap_or(0);
            (0..=most.clamp(0, super::NPZ_MAX_CLASSES - 1))
                .map(|c| c.to_string())
                .collect()
        }
    };
    let train = entries(
        &root,
        &train_name,
        train_rows,
        &class_names,
        classes.is_some(),
    )?;
    let test = entries(
        &root,
        &test_name,
        test_rows,
        &class_names,
        classes.is_some(),
    )?;
    let table = FileTable {
        format: "manifest",
        root: root.given.clone(),
        train,
        test,
        train_source: train_name.display().to_string(),
        test_source: test_name.display().to_string(),
        class_names,
    };
    table.check_classes()?;
    Ok(table)
}

/// A label as written: a class index or a class name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Label {
    Index(i64),
    Name(String),
}

impl Label {
    fn parse(text: &str) -> Label {
        match text.trim().parse::<i64>() {
            Ok(i) => Label::Index(i),
            Err(_) => Label::Name(text.trim().to_string()),
        }
    }

    fn index(&self) -> Option<i64> {
        match self {
            Label::Index(i) => Some(*i),
            Label::Name(_) => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    path: String,
    label: Label,
    /// 1-based line in the manifest (set after parsing).
    #[serde(skip)]
    line: u64,
}

fn read_rows(root: &Root, name: &Path) -> Result<Vec<Row>, DataError> {
    let path = root.given.join(name);
    let text = std::fs::read_to_string(&path).map_err(|source| DataError::Io {
        path: path.clone(),
        source,
    })?;
    let bad = |line: u64, detail: String| DataError::Manifest {
        path: path.clone(),
        line,
        detail,
    };
    let mut rows = Vec::new();
    if name.extension().is_some_and(|e| e == "jsonl") {
        for (i, line) in text.lines().enumerate() {
            let n = i as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            let mut row: Row = serde_json::from_str(line).map_err(|e| bad(n, e.to_string()))?;
            row.line = n;
            rows.push(row);
        }
        return Ok(rows);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(i as u64 + 1, |p| p.line());
            bad(line, e.to_string())
        })?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        if record.len() != 2 {
            return Err(bad(
                line,
                format!("{} fields; expected `path,label`", record.len()),
            ));
        }
        if i == 0
            && record[0].eq_ignore_ascii_case("path")
            && record[1].eq_ignore_ascii_case("label")
        {
            continue; // the header row
        }
        rows.push(Row {
            path: record[0].to_string(),
            label: Label::parse(&record[1]),
            line,
        });
    }
    Ok(rows)
}

fn entries(
    root: &Root,
    manifest: &Path,
    rows: Vec<Row>,
    class_names: &[String],
    named: bool,
) -> Result<Vec<ImageEntry>, DataError> {
    let path = root.given.join(manifest);
    rows.into_iter()
        .map(|row| {
            let label = match &row.label {
                Label::Index(i) => *i,
                Label::Name(name) if named => class_names
                    .iter()
                    .position(|c| c == name)
                    .map(|p| p as i64)
                    .ok_or_else(|| DataError::Manifest {
                        path: path.clone(),
                        line: row.line,
                        detail: format!(
                            "label `{name}` is not in dataset.classes ({})",
                            class_names.join(", ")
                        ),
                    })?,
                Label::Name(name) => {
                    return Err(DataError::Manifest {
                        path: path.clone(),
                        line: row.line,
                        detail: format!(
                            "label `{name}` is not a class index; set dataset.classes to use class names"
                        ),
                    })
                }
            };
            if !(0..class_names.len() as i64).contains(&label) {
                return Err(DataError::Manifest {
                    path: path.clone(),
                    line: row.line,
                    detail: format!("label {label} is outside 0..{}", class_names.len()),
                });
            }
            let rel = PathBuf::from(&row.path);
            let real = root.resolve(&rel, false).map_err(|e| DataError::Manifest {
                path: path.clone(),
                line: row.line,
                detail: e.to_string(),
            })?;
            let bytes = std::fs::metadata(real).map(|m| m.len()).unwrap_or(0);
            Ok(ImageEntry {
                path: rel,
                bytes,
                label,
            })
        })
        .collect()
}
