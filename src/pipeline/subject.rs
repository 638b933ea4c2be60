//! The subject of a job: a parsed ONNX model, the dataset it is evaluated and trained on, the input adapter
//! (normalization + layout) both engines apply, and the device — loaded once and checked against each other so a
//! mismatch (a CIFAR model on Fashion-MNIST, a wrong layout) fails early with a message naming both.

use std::path::{Path, PathBuf};

use tch::Device;

use super::PipelineError;
use crate::config::{Config, Method};
use crate::data::{Dataset, ImageFiles, Splits};
use crate::device::DeviceId;
use crate::eval::EvalSet;
use crate::model::Scorer;
use crate::model::{InputAdapter, Layout};
use crate::onnx::{
    self, GraphForm, OnnxError, OnnxModel, OrtScorer, Spinning, TchModel, TchOptions,
};
use crate::report::{
    DatasetFiles, DatasetInfo, FileRef, ModelForm, ModelInfo, Normalization, SkippedFiles,
    TensorSpec,
};
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
    /// Whether the job still owns its checkpoint directory, asked before every training checkpoint (see
    /// [`crate::job::CancelToken::holds_claim`]); `None` = always.
    pub claim: Option<crate::job::cancel::ClaimCheck>,
    /// The ops robustd cannot interpret, as the loader listed them (`com.microsoft.nchwc::Conv (2 nodes)`):
    /// the model is then evaluated score-based only.
    unsupported: Vec<String>,
    /// The execution provider of the last onnxruntime session opened (the report's).
    ort_provider: std::sync::Mutex<Option<String>>,
}

/// How robustd can run a subject's model.
pub enum Engine {
    /// The trainable interpreter: gradient attacks and fine-tuning.
    WhiteBox(Box<TchModel>),
    /// onnxruntime only, because the graph holds ops robustd cannot interpret or differentiate (listed).
    ScoreBased(Vec<String>),
}

/// `Op (n nodes)` for each entry of an unsupported-ops list.
fn describe_ops(ops: &[(String, usize)]) -> Vec<String> {
    ops.iter()
        .map(|(op, n)| format!("{op} ({n} node{})", if *n == 1 { "" } else { "s" }))
        .collect()
}

impl Subject {
    /// Loads onnxruntime, the model and the dataset, and resolves the adapter and the device.
    pub fn load(path: &Path, config: &Config) -> Result<Self, PipelineError> {
        Self::load_timed(path, config, &|_| {})
    }

    /// [`Subject::load`], naming each step to `part` as it starts (`runtimes`, `onnx model`, `dataset`), for the
    /// report's timing block.
    pub fn load_timed(
        path: &Path,
        config: &Config,
        part: &dyn Fn(&str),
    ) -> Result<Self, PipelineError> {
        part("runtimes");
        runtime::init_ort(config.runtime.ort_library.as_deref())?;
        runtime::tune_allocator();
        runtime::set_torch_threads(config.runtime.threads);
        let device = runtime::parse_device(&config.runtime.device)?;
        part("onnx model");
        if device.is_cuda() {
            // As PyTorch users run convolutions on a GPU: cuDNN times its algorithms once per shape and keeps the
            // fastest (process-wide; batch shapes repeat through an attack or an epoch).
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let (onnx, unsupported) = OnnxModel::load_lenient(path, &config.limits)?;
        let unsupported = match unsupported {
            None => Vec::new(),
            Some(OnnxError::UnsupportedOps { ops, .. }) => describe_ops(&ops),
            Some(other) => return Err(other.into()),
        };
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
        let model_chw = onnx::infer_input_chw(input, layout);
        // An evaluation alone needs no training samples: their files are hashed for the digest, not decoded.
        let splits = if config.train.method == Method::None {
            Splits::TestOnly
        } else {
            Splits::All
        };
        part("dataset");
        let dataset = Dataset::open_splits(config, model_chw, splits)?;
        if let Some(chw) = model_chw {
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
            claim: None,
            unsupported,
            ort_provider: Default::default(),
        })
    }

    /// The shipped form of the model (precision, quantization, contrib ops).
    pub fn form(&self) -> GraphForm {
        GraphForm::of(&self.onnx)
    }

    /// The interpreter, or — when the graph holds ops robustd cannot interpret (found at load, or when planning:
    /// an `If` on the input) — the list of them, for score-based evaluation.
    pub fn engine(&self) -> Result<Engine, PipelineError> {
        if !self.unsupported.is_empty() {
            return Ok(Engine::ScoreBased(self.unsupported.clone()));
        }
        match self.tch_model() {
            Ok(model) => Ok(Engine::WhiteBox(Box::new(model))),
            Err(PipelineError::Onnx(OnnxError::UnsupportedOps { ops, .. })) => {
                Ok(Engine::ScoreBased(describe_ops(&ops)))
            }
            Err(e) => Err(e),
        }
    }

    /// The class count from one onnxruntime forward pass on an all-zero image (what the interpreter's probe
    /// gives for models it runs), checked to be finite logits `[1, classes]`.
    pub fn probe_classes(&self, scorer: &mut OrtScorer) -> Result<i64, PipelineError> {
        let [c, h, w] = self.dataset.chw;
        let zeros = tch::Tensor::f_zeros([1, c, h, w], (tch::Kind::Float, Device::Cpu))?;
        let logits = scorer.logits(&zeros).map_err(|e| PipelineError::Mismatch {
            model: self.path.clone(),
            message: e.to_string(),
        })?;
        let finite = logits.f_isfinite()?.f_all()?.f_int64_value(&[])? == 1;
        match logits.size().as_slice() {
            [1, n] if *n >= 2 && finite => Ok(*n),
            other => Err(PipelineError::Mismatch {
                model: self.path.clone(),
                message: format!(
                    "onnxruntime gives {other:?} logits{} for one all-zero image; a classifier gives finite \
                     [1, classes] with 2 or more classes",
                    if finite { "" } else { " (not finite)" }
                ),
            }),
        }
    }

    /// A fresh trainable interpreter of the model on the job's device.
    pub fn tch_model(&self) -> Result<TchModel, PipelineError> {
        let options = TchOptions {
            train_batchnorm: self.config.train.train_batchnorm,
            input_chw: Some(self.dataset.chw),
        };
        let mut model = TchModel::new(&self.onnx, self.adapter.clone(), self.device, options)?;
        model.set_interrupt(self.interrupt.clone());
        // CUDA only: attacks in bfloat16 when `eval.amp` asks (training sets its own autocast, `train.amp`), and
        // channels-last inputs with `train.channels_last`.
        let cuda = self.device.is_cuda();
        model.set_precision(onnx::Precision {
            amp: cuda && self.config.eval.amp && crate::device::amp::autocast_available(),
            channels_last: cuda && self.config.train.channels_last,
        });
        Ok(model)
    }

    /// An onnxruntime session on `file` (the original, or the written-back model) with the same adapter. Its
    /// threads do not spin between runs ([`Spinning::Off`]): its runs alternate with libtorch work.
    pub fn scorer(&self, file: &Path) -> Result<OrtScorer, PipelineError> {
        let device = match self.device {
            Device::Cuda(i) => DeviceId::Cuda(i),
            _ => DeviceId::Cpu,
        };
        let mut scorer = OrtScorer::on_device(
            file,
            self.adapter.clone(),
            self.config.runtime.threads,
            device,
            Spinning::Off,
        )?;
        scorer.set_interrupt(self.interrupt.clone());
        *self.ort_provider.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(scorer.provider().describe());
        Ok(scorer)
    }

    /// The execution provider the subject's onnxruntime sessions ran on, once one was opened.
    pub fn ort_provider(&self) -> Option<String> {
        self.ort_provider
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The evaluated test samples, with their dataset indices.
    pub fn eval_set(&self) -> Result<EvalSet, PipelineError> {
        let test = &self.dataset.test;
        let indices = test.indices.iter().map(|&i| i as u64).collect();
        Ok(EvalSet::new(
            test.eval_pixels()?,
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

    /// The report's `model.form` block: the graph's form and how this job works with it (`score_based`: the
    /// ops that kept it from white-box evaluation).
    pub fn model_form(&self, score_based: Option<&[String]>) -> ModelForm {
        let form = self.form();
        let precision = form.precision_name().to_owned();
        let quantized = form
            .quantization
            .map_or(String::new(), |q| format!(", {} quantized", q.name()));
        ModelForm {
            precision: precision.clone(),
            quantization: form.quantization.map(|q| q.name().to_owned()),
            contrib_ops: describe_ops(&form.contrib_ops),
            unsupported_ops: score_based.map(<[String]>::to_vec).unwrap_or_default(),
            gradients: match score_based {
                Some(_) => "none: robustd cannot differentiate this graph".into(),
                None => form.gradients(),
            },
            verdicts: format!("onnxruntime on the shipped file ({precision}{quantized})"),
            fine_tuning: match score_based {
                Some(_) => "not possible: it needs gradients through the graph".into(),
                None => form.fine_tuning().unwrap_or_else(|refusal| refusal),
            },
        }
    }

    /// The summary's `scope` line: said whenever the model is not a float32 graph evaluated white-box.
    pub fn scope(&self, form: &ModelForm) -> Option<String> {
        if !form.unsupported_ops.is_empty() {
            return Some(format!(
                "{} {} not supported",
                crate::report::SCORE_BASED_SCOPE,
                form.unsupported_ops.join(", ")
            ));
        }
        (form.precision != "float32" || form.quantization.is_some()).then(|| {
            format!(
                "white-box: gradients from {}; verdicts from {}; fine-tuning: {}",
                form.gradients, form.verdicts, form.fine_tuning
            )
        })
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
            form: None,
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
            // An evaluation alone does not load the training split.
            train: (self.config.train.method != Method::None)
                .then_some(self.dataset.train.len() as u64),
            test: Some(self.dataset.test.len() as u64),
            eval_samples: Some(format!(
                "{how} {} of test ({} in the split)",
                self.dataset.test.len(),
                self.dataset.test.source_len
            )),
            // Image files have no content digest (reading every file would cost a pass); `files` holds their
            // fingerprint instead.
            sha256: self
                .dataset
                .files
                .is_none()
                .then(|| self.dataset.sha256.clone()),
            normalization: self.adapter.normalizes().then(|| Normalization {
                mean: self.adapter.mean.clone(),
                std: self.adapter.std.clone(),
            }),
            files: self
                .dataset
                .files
                .as_ref()
                .map(|f| files_report(f, &self.dataset)),
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

/// The report's record of an image-file dataset.
fn files_report(files: &ImageFiles, dataset: &Dataset) -> DatasetFiles {
    let skipped = files.skipped();
    DatasetFiles {
        format: files.format.into(),
        root: files.root.display().to_string(),
        fingerprint: files.fingerprint.clone(),
        train_source: files.train_source.clone(),
        test_source: files.test_source.clone(),
        classes: dataset.class_names.clone(),
        preprocessing: files.preprocess.clone(),
        decoder: crate::data::DECODER.into(),
        decode_threads: files.decode_threads,
        prefetch_batches: files.prefetch_batches,
        cache: files.cache.as_ref().map(|c| c.display().to_string()),
        skipped: SkippedFiles {
            count: skipped.count as u64,
            files: skipped.files,
        },
    }
}
