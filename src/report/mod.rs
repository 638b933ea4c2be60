//! Everything robustd writes for people and tools: the versioned YAML report (`robustd.report/v1`), `error.yaml`
//! for failed jobs, the report validator and the PNG plots (written through [`crate::durable`]).

// Code the daemon runs unattended must not panic on bad input: no unwrap/expect/panic outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod comparison;
pub mod error_report;
pub mod plots;
pub mod schema;
pub mod validate;

pub use error_report::{error_chain, ErrorReport, ProcessInfo, ERROR_SCHEMA};
pub use schema::*;
pub use validate::{sha256_hex, validate_report_file, validate_report_yaml, InvalidReport, Issue};
