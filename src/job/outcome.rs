//! What a successful run returns: the report sections the runner owns. Whoever scheduled the job adds the rest
//! (environment, artifact digests, job, timing) and writes `report.yaml`.

use crate::report::{DatasetInfo, Evaluation, Memorization, ModelInfo, Summary, Training};

/// What a successful run produced: the report sections it owns. The daemon adds environment, artifacts (with
/// digests), job and timing, and writes `report.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub summary: Summary,
    pub model: ModelInfo,
    pub dataset: Option<DatasetInfo>,
    pub evaluation: Option<Evaluation>,
    pub memorization: Option<Memorization>,
    pub training: Option<Training>,
    /// Relative to the output directory.
    pub fine_tuned_model: Option<String>,
    pub plots: Vec<String>,
    pub per_sample: Option<String>,
    pub training_log: Option<String>,
}

impl JobOutcome {
    /// An outcome with the two sections every runner fills; the optional ones start empty.
    pub fn new(summary: Summary, model: ModelInfo) -> Self {
        Self {
            summary,
            model,
            dataset: None,
            evaluation: None,
            memorization: None,
            training: None,
            fine_tuned_model: None,
            plots: Vec::new(),
            per_sample: None,
            training_log: None,
        }
    }
}
