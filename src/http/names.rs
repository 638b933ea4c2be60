//! Names and paths that arrive in a URL (already percent-decoded by the router), checked before they touch the
//! filesystem. A model name or job id is one segment of `[A-Za-z0-9._-]` that does not start with a dot or a dash
//! (what intake makes of a dropped file's name); a result file is `/`-separated segments of the same kind. Then the
//! resolved path, symlinks followed, must still lie inside `paths.models` (the links between identical results
//! do): a link that leads anywhere else is refused too.

use std::path::{Path, PathBuf};

/// Longest name or path accepted (bytes).
pub const MAX_LEN: usize = 512;

/// Whether `name` is a single safe segment.
pub fn is_safe_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `path` is relative, `/`-separated safe segments (no `.`/`..`, no empty segment).
pub fn is_safe_relative(path: &str) -> bool {
    path.len() <= MAX_LEN && path.split('/').all(is_safe_segment)
}

/// `root/<parts...>` resolved (symlinks followed) if it exists and stays inside `root`.
pub fn resolve_inside(root: &Path, parts: &[&str]) -> Option<PathBuf> {
    let root = root.canonicalize().ok()?;
    let mut path = root.clone();
    for part in parts {
        path.push(part);
    }
    let real = path.canonicalize().ok()?;
    real.starts_with(&root).then_some(real)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn segments_of_the_sanitized_alphabet_pass_and_nothing_else() {
        for ok in ["fmnist_cnn", "a.b-c_1", "model..x", "report.yaml"] {
            assert!(is_safe_segment(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", ".hidden", "-x", "a/b", "a\\b", "a%2f", "a b", "a\0b", "é", "a:b",
        ] {
            assert!(!is_safe_segment(bad), "{bad:?}");
        }
        assert!(is_safe_relative("plots/training.png"));
        for bad in ["/etc/passwd", "plots//x.png", "plots/../x", "plots/", "./x"] {
            assert!(!is_safe_relative(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_symlink_out_of_the_root_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("models");
        std::fs::create_dir_all(root.join("m/abc")).unwrap();
        std::fs::write(root.join("m/abc/report.yaml"), "x").unwrap();
        std::fs::write(tmp.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("m/abc/leak")).unwrap();
        std::os::unix::fs::symlink("abc", root.join("m/latest")).unwrap();
        assert!(resolve_inside(&root, &["m", "latest", "report.yaml"]).is_some());
        assert!(resolve_inside(&root, &["m", "abc", "leak"]).is_none());
        assert!(resolve_inside(&root, &["m", "nope"]).is_none());
    }
}
