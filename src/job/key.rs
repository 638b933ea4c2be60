//! The content key: what makes two runs the same run, and so where their result lives. It is sha256 over the
//! model's digest, its external data's digests (in the order the model references them) and the resolved config's
//! digest, plus, for a CLI command, that command's own settings. The daemon keys `models/<name>/<key12>/` and its
//! dedupe with it; `robustd eval/finetune/compare` key `models/<stem>/<key12>-<command>/` and their checkpoints.

use crate::report::sha256_hex;

/// The key (64 hex digits) of a model with these digests under a config with this digest; `settings` are what else
/// a CLI command varies (its name, compare's methods and seeds), `None` for a daemon job.
pub fn content_key(
    model_sha256: &str,
    companion_sha256: &[impl AsRef<str>],
    config_sha256: &str,
    settings: Option<&str>,
) -> String {
    let companions: Vec<&str> = companion_sha256.iter().map(AsRef::as_ref).collect();
    let mut text = format!("{model_sha256}:{}:{config_sha256}", companions.join(","));
    if let Some(settings) = settings {
        text.push(':');
        text.push_str(settings);
    }
    sha256_hex(text.as_bytes())
}

/// The first 12 hex digits of a key: the `<key12>` of result directories.
pub fn key12(key: &str) -> &str {
    &key[..12.min(key.len())]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_formula_is_fixed_so_existing_results_keep_their_directories() {
        let (model, data, config) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        assert_eq!(
            content_key(&model, &[&data], &config, None),
            sha256_hex(format!("{model}:{data}:{config}").as_bytes())
        );
        assert_eq!(
            content_key(&model, &[] as &[&str], &config, Some("eval")),
            sha256_hex(format!("{model}::{config}:eval").as_bytes())
        );
        assert_ne!(
            content_key(&model, &[&data], &config, None),
            content_key(&model, &[&data], &config, Some("eval"))
        );
        assert_eq!(key12(&model), "aaaaaaaaaaaa");
    }
}
