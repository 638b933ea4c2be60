//! Helpers for the tests that drive the real `robustd eval|finetune|compare` binary: the trained fixture model, a
//! tiny config (few samples, few attack steps, one epoch), and running the binary in a temp directory with its exit
//! code and output captured.
#![allow(dead_code)]

#[path = "../fixtures/mod.rs"]
mod fixtures;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_robustd");

/// The small CNN trained on Fashion-MNIST (`make fixtures` writes it), or another generated fixture.
pub fn fixture(name: &str) -> PathBuf {
    fixtures::generated(name)
}

pub fn trained_model() -> PathBuf {
    fixture("fmnist_cnn_small.onnx")
}

/// A config small enough for a test on two shared cores: one thread, few samples, few attack and training steps,
/// the K=2 holdout for BAT with one epoch per half model. `extra` is appended (later keys win).
pub fn tiny_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("tiny.yaml");
    let text = format!(
        "runtime: {{threads: 1, device: cpu}}\n\
         dataset: {{train_samples: 400, eval_samples: 40}}\n\
         eval:\n  attacks: [pgd, square]\n  pgd: {{steps: 5}}\n  apgd_steps: 10\n  square_queries: 40\n  \
         eps_curve: [0.0, 0.1]\n\
         train:\n  epochs: 1\n  pgd: {{steps: 3}}\n  bat: {{atypicality: holdout}}\n\
         memorization: {{epochs: 1}}\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The result of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn text(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The `robustd: error: …` line.
    pub fn error_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("robustd: error:"))
            .unwrap_or("")
    }
}

/// Runs `robustd ARGS` in `cwd` and waits for it.
pub fn robustd(cwd: &Path, args: &[&str]) -> Run {
    let out: Output = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Entries of a directory (empty when it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}
