//! File names in the inbox: which ones are model drops, which are ignored (temporary and hidden files), which
//! sidecar goes with a model, and how a hostile name (path separators, `..`, control characters, non-UTF-8, huge)
//! becomes a safe directory name.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Longest sanitized model name (bytes).
pub const MAX_NAME_LEN: usize = 100;

/// What a name in `watch/` is to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropKind {
    /// `*.onnx`: a model to process.
    Model,
    /// Hidden (`.*`), `*.part`, `*.tmp`: a file still being written by someone; never touched.
    Ignored,
    /// Anything else: a sidecar (`NAME.yaml`), an external-data companion, or unrelated; taken only together with
    /// the model that names it.
    Other,
}

pub fn classify(name: &OsStr) -> DropKind {
    let name = name.to_string_lossy();
    if name.starts_with('.') || name.ends_with(".part") || name.ends_with(".tmp") {
        DropKind::Ignored
    } else if name.ends_with(".onnx") && name.len() > ".onnx".len() {
        DropKind::Model
    } else {
        DropKind::Other
    }
}

/// The model's name without `.onnx`, made safe for a directory name: only `[A-Za-z0-9._-]` (others become `_`),
/// no leading dot or dash, at most [`MAX_NAME_LEN`] bytes, never empty.
pub fn sanitize_model_name(file_name: &OsStr) -> String {
    let lossy = file_name.to_string_lossy();
    let stem = lossy.strip_suffix(".onnx").unwrap_or(&lossy);
    let mut out = String::with_capacity(stem.len().min(MAX_NAME_LEN));
    for c in stem.chars() {
        if out.len() >= MAX_NAME_LEN {
            break;
        }
        let safe = c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let c = if safe { c } else { '_' };
        if out.is_empty() && matches!(c, '.' | '-') {
            continue;
        }
        out.push(c);
    }
    if out.chars().all(|c| c == '_' || c == '.') {
        out = format!("model{out}");
    }
    out
}

/// Whether an external-data `location` from inside a model is a plain file name next to the model: no directory
/// parts, no `..`, not hidden, no control characters. Anything else is refused (the model could otherwise make the
/// daemon read files outside the inbox).
pub fn is_safe_companion(location: &str) -> bool {
    !location.is_empty()
        && location.len() <= 255
        && !location.starts_with('.')
        && !location.contains(['/', '\\'])
        && !location.chars().any(char::is_control)
}

/// The sidecar (`NAME.yaml`) that goes with the model `NAME.onnx` in `dir`.
pub fn sidecar_path(dir: &Path, model: &OsStr) -> PathBuf {
    let s = model.to_string_lossy();
    let stem = s.strip_suffix(".onnx").unwrap_or(&s);
    dir.join(format!("{stem}.yaml"))
}

/// A printable form of any file name for logs and error files.
pub fn display_name(name: &OsStr) -> String {
    name.to_string_lossy()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn classifies_models_temporaries_and_the_rest() {
        for (name, kind) in [
            ("a.onnx", DropKind::Model),
            (".a.onnx", DropKind::Ignored),
            (".a.onnx.part", DropKind::Ignored),
            ("a.onnx.part", DropKind::Ignored),
            ("a.onnx.tmp", DropKind::Ignored),
            ("a.yaml", DropKind::Other),
            ("a.onnx.data", DropKind::Other),
            (".onnx", DropKind::Ignored),
        ] {
            assert_eq!(classify(OsStr::new(name)), kind, "{name}");
        }
    }

    #[test]
    fn hostile_names_become_safe_directory_names() {
        let long = "x".repeat(500) + ".onnx";
        for (raw, want) in [
            (b"mlp.onnx".as_slice(), "mlp"),
            (b"..onnx", "model"),
            (b"-rf .onnx", "rf_"),
            (b"a\nb\x1b[31m.onnx", "a_b__31m"),
            (b"\xff\xfe.onnx", "model__"),
            (b"..\\..\\etc.onnx", "_.._etc"),
            (long.as_bytes(), &"x".repeat(MAX_NAME_LEN)),
        ] {
            let got = sanitize_model_name(OsStr::from_bytes(raw));
            assert_eq!(got, want, "{raw:?}");
            assert!(!got.contains('/') && !got.starts_with('.') && got != "..");
        }
    }

    #[test]
    fn companions_must_be_plain_names() {
        assert!(is_safe_companion("model.onnx.data"));
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a/b",
            ".hidden",
            "a\\b",
            "a\nb",
            "..",
        ] {
            assert!(!is_safe_companion(bad), "{bad:?}");
        }
    }
}
