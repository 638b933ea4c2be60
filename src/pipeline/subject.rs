//! The subject of a job: a parsed ONNX model, the dataset it is evaluated and trained on, the input adapter
//! (normalization + layout) both engines apply, and the device — loaded once and checked against each other so a
//! mismatch (a CIFAR model on Fashion-MNIST, a wrong layout) fails early with a message naming both.

use std::path::{Path, PathBuf};

use tch::Device;

use super::PipelineError;
use crate::config::Config;
use crate::data::Dataset;
use crate::eval::EvalSet;
use crate::model::{InputAdapter, Layout};
use crate::onnx::{self, OnnxModel, OrtScorer, TchModel, TchOptions};
use crate::report::{DatasetInfo, FileRef, ModelInfo, Normalization, TensorSpec};
use crate::runtime;

pub struct Subject {
    pub config: Config,
    pub onnx: OnnxModel,
    pub dataset: Dataset,
    /// Normalization from the config and the layout resolved from the ONNX input.
    pub adapter: InputAdapter,
    pub device: Device,
    /// The model file as given.
    pub path: PathBuf,
    /// The name the user gave the file, when `path` is a spool copy with another name.
    pub display_name: Option<String>,
    /// Installed in every interpreter this subject builds (see [`crate::onnx::Interrupt`]).
    pub interrupt: Option<onnx::Interrupt>,
}

impl Subject {
    /// Loads onnxruntime, the model and the dataset, and resolves the adapter and the device.
    pub fn load(path: &Path, config: &Config) -> Result<Self, PipelineError> {
        runtime::init_ort(config.runtime.ort_library.as_deref())?;
        runtime::tune_allocator();
        runtime::set_torch_threads(config.runtime.threads);
        let device = runtime::parse_device(&config.runtime.device)?;
        let onnx = OnnxModel::load(path, &config.limits)?;
        let dataset = Dataset::load(&config.dataset, config.runtime.seed)?;
        let input = onnx
            .inputs()
            .first()
            .ok_or_else(|| PipelineError::Mismatch {
                model: path.to_path_buf(),
                message: "the graph has no inputs".into(),
            })?;
        let layout = onnx::resolve_layout(input, config.model.input_layout).map_err(|e| {
            PipelineError::Mismatch {
                model: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        if let Some(chw) = onnx::infer_input_chw(input, layout) {
            if chw != dataset.chw {
                return Err(PipelineError::Mismatch {
                    model: path.to_path_buf(),
                    message: format!(
                        "input `{}` {} takes images of [C, H, W] = {chw:?}, but dataset {} has {:?}; \
                         set dataset.name (or model.input_layout)",
                        input.name,
                        input.shape_string(),
                        dataset.name,
                        dataset.chw
                    ),
                });
            }
        }
        let adapter = InputAdapter {
            mean: config.model.mean.clone().unwrap_or_default(),
            std: config.model.std.clone().unwrap_or_default(),
            layout,
        };
        if !adapter.mean.is_empty() && adapter.mean.len() as i64 != dataset.chw[0] {
            return Err(PipelineError::Mismatch {
                model: path.to_path_buf(),
                message: format!(
                    "model.mean has {} values but the images have {} channels",
                    adapter.mean.len(),
                    dataset.chw[0]
                ),
            });
        }
        Ok(Self {
            config: config.clone(),
            onnx,
            dataset,
            adapter,
            device,
            path: path.to_path_buf(),
            display_name: None,
            interrupt: None,
        })
    }

    /// A fresh trainable interpreter of the model on the job's device.
    pub fn tch_model(&self) -> Result<TchModel, PipelineError> {
        let options = TchOptions {
            train_batchnorm: self.config.train.train_batchnorm,
            input_chw: Some(self.dataset.chw),
        };
        let mut model = TchModel::new(&self.onnx, self.adapter.clone(), self.device, options)?;
        model.set_interrupt(self.interrupt.clone());
        Ok(model)
    }

    /// An onnxruntime session on `file` (the original, or the written-back model) with the same adapter.
    pub fn scorer(&self, file: &Path) -> Result<OrtScorer, PipelineError> {
        let mut scorer = OrtScorer::new(file, self.adapter.clone(), self.config.runtime.threads)?;
        scorer.set_interrupt(self.interrupt.clone());
        Ok(scorer)
    }

    /// The evaluated test samples, with their dataset indices.
    pub fn eval_set(&self) -> Result<EvalSet, PipelineError> {
        let test = &self.dataset.test;
        let indices = test.indices.iter().map(|&i| i as u64).collect();
        Ok(EvalSet::new(
            test.x.shallow_clone(),
            test.y.shallow_clone(),
            indices,
        )?)
    }

    /// The file name the model was given as.
    pub fn file_name(&self) -> String {
        if let Some(name) = &self.display_name {
            return name.clone();
        }
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// `fmnist_cnn` for `fmnist_cnn.onnx`.
    pub fn stem(&self) -> String {
        let name = self.file_name();
        Path::new(&name)
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    }

    /// The report's `model:` block, from the parsed graph.
    pub fn model_info(&self, classes: i64) -> Result<ModelInfo, PipelineError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| PipelineError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let bytes = read(&self.path)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut external_data = Vec::new();
        for rel in self.onnx.external_data_files() {
            let data = read(&dir.join(rel))?;
            external_data.push(FileRef {
                path: rel.clone(),
                sha256: crate::report::sha256_hex(&data),
                bytes: Some(data.len() as u64),
            });
        }
        let specs = |values: &[onnx::ValueInfo]| -> Vec<TensorSpec> {
            values
                .iter()
                .map(|v| TensorSpec {
                    name: v.name.clone(),
                    shape: v
                        .dims
                        .iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, d)| match d {
                            onnx::Dim::Fixed(n) => crate::report::Dim::Fixed(*n),
                            onnx::Dim::Symbolic(s) => crate::report::Dim::Symbolic(s.clone()),
                            onnx::Dim::Unknown => crate::report::Dim::Symbolic(format!("dim{i}")),
                        })
                        .collect(),
                    dtype: v.dtype_name().to_owned(),
                })
                .collect()
        };
        Ok(ModelInfo {
            file: self.file_name(),
            sha256: crate::report::sha256_hex(&bytes),
            opset: Some(self.onnx.opset()),
            ir_version: Some(self.onnx.ir_version()),
            producer: Some(self.onnx.producer().to_owned()).filter(|p| !p.is_empty()),
            inputs: specs(self.onnx.inputs()),
            outputs: specs(self.onnx.outputs()),
            parameters: Some(self.onnx.parameter_count()),
            classes: Some(classes as u64),
            external_data,
            forward_check: None,
        })
    }

    /// The report's `dataset:` block.
    pub fn dataset_info(&self) -> DatasetInfo {
        let cfg = &self.config.dataset;
        let how = if cfg.random_subset {
            "seeded random"
        } else {
            "first"
        };
        DatasetInfo {
            name: self.dataset.name.clone(),
            train: Some(self.dataset.train.len() as u64),
            test: Some(self.dataset.test.len() as u64),
            eval_samples: Some(format!(
                "{how} {} of test ({} in the split)",
                self.dataset.test.len(),
                self.dataset.test.source_len
            )),
            sha256: Some(self.dataset.sha256.clone()),
            normalization: self.adapter.normalizes().then(|| Normalization {
                mean: self.adapter.mean.clone(),
                std: self.adapter.std.clone(),
            }),
        }
    }

    /// Human name of the resolved input layout.
    pub fn layout_name(&self) -> &'static str {
        match self.adapter.layout {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
            Layout::Flat => "flat",
        }
    }
}
