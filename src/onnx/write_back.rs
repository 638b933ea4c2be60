//! Write-back: the original graph (same opset, IR version, functions, metadata, fused and quantized nodes) with
//! the trained initializers in their original element types,
//! plus `metadata_props` saying which robustd version and method produced it. Weights go to an external-data file
//! beside the model when the original used external data or the model would exceed 1 GiB. Both files are written
//! atomically: a temp file in the target directory, fsync, rename, then the directory is synced.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use super::error::OnnxError;
use super::model::OnnxModel;
use super::proto::{StringStringEntryProto, DATA_LOCATION_EXTERNAL};
use super::tch_model::TchModel;

/// Models larger than this are always written with external data (protobuf's 2 GiB ceiling, with margin).
pub const EXTERNAL_DATA_THRESHOLD: u64 = 1 << 30;
/// Tensors at least this large go to the external-data file (small ones stay inline, as the exporters do).
const EXTERNAL_MIN_BYTES: usize = 1024;
/// Offsets in the external-data file are aligned to this (what onnx's own writer uses for mmap-friendliness).
const EXTERNAL_ALIGN: u64 = 4096;
/// Metadata key for the robustd version; callers add their own (`robustd.method`, …).
pub const VERSION_KEY: &str = "robustd.version";

/// What [`write_back`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenModel {
    pub model: PathBuf,
    /// The external-data file, if one was written.
    pub data: Option<PathBuf>,
    pub bytes: u64,
}

/// Writes `model`'s graph with `trained`'s initializer values to `out`. See the module docs.
pub fn write_back(
    model: &OnnxModel,
    trained: &TchModel,
    out: &Path,
    metadata: &[(&str, &str)],
) -> Result<WrittenModel, OnnxError> {
    write_back_with_threshold(model, trained, out, metadata, EXTERNAL_DATA_THRESHOLD)
}

/// [`write_back`] with the size above which weights go to external data as a parameter (tests lower it).
pub(crate) fn write_back_with_threshold(
    model: &OnnxModel,
    trained: &TchModel,
    out: &Path,
    metadata: &[(&str, &str)],
    external_threshold: u64,
) -> Result<WrittenModel, OnnxError> {
    let io = |action: &'static str| {
        move |source| OnnxError::Io {
            file: out.to_path_buf(),
            action,
            source,
        }
    };
    let mut proto = model.skeleton().clone();
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::model(model.path(), "the model has no graph"))?;
    let mut payloads: Vec<Bytes> = Vec::with_capacity(graph.initializer.len());
    for t in &graph.initializer {
        let original = model
            .initializer(&t.name)
            .ok_or_else(|| OnnxError::Tensor {
                file: model.path().to_path_buf(),
                tensor: t.name.clone(),
                message: "initializer missing from the loaded model".into(),
            })?;
        // Trained state in the file's own element type (float16 stays float16, int8 weights are re-quantized).
        let bytes = match trained.stored_value(&t.name) {
            Some(stored) => stored?.bytes,
            None => original.data.bytes.clone(),
        };
        payloads.push(bytes);
    }
    let total: u64 = payloads.iter().map(|b| b.len() as u64).sum();
    let external = model.uses_external_data() || total > external_threshold;

    let file_name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| OnnxError::model(out, "the output path has no valid file name"))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let data_name = format!("{file_name}.data");
    let mut data_file: Vec<u8> = Vec::new();
    for (t, bytes) in graph.initializer.iter_mut().zip(payloads) {
        if external && bytes.len() >= EXTERNAL_MIN_BYTES {
            let offset = (data_file.len() as u64).div_ceil(EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
            data_file.resize(offset as usize, 0);
            data_file.extend_from_slice(&bytes);
            t.data_location = DATA_LOCATION_EXTERNAL;
            t.external_data = vec![
                entry("location", &data_name),
                entry("offset", &offset.to_string()),
                entry("length", &bytes.len().to_string()),
            ];
        } else {
            t.raw_data = bytes;
        }
    }

    set_metadata(
        &mut proto.metadata_props,
        VERSION_KEY,
        env!("CARGO_PKG_VERSION"),
    );
    for (k, v) in metadata {
        set_metadata(&mut proto.metadata_props, k, v);
    }

    let data_path = dir.join(&data_name);
    let wrote_data = external && !data_file.is_empty();
    if wrote_data {
        write_atomically(&data_path, &data_file)
            .map_err(io("cannot write the external-data file"))?;
    }
    let encoded = proto.encode_to_vec();
    write_atomically(out, &encoded).map_err(io("cannot write the model"))?;
    crate::durable::sync_dir(dir).map_err(io("cannot sync the output directory"))?;
    Ok(WrittenModel {
        model: out.to_path_buf(),
        data: wrote_data.then_some(data_path),
        bytes: encoded.len() as u64
            + if wrote_data {
                data_file.len() as u64
            } else {
                0
            },
    })
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

fn set_metadata(props: &mut Vec<StringStringEntryProto>, key: &str, value: &str) {
    match props.iter_mut().find(|kv| kv.key == key) {
        Some(kv) => kv.value = value.to_owned(),
        None => props.push(entry(key, value)),
    }
}

/// Through the project's one atomic writer (temp file in the same directory, fsync, rename, mode 0644).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::durable::write_atomic(path, bytes).map_err(|e| match e {
        crate::durable::WriteError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Classifier, InputAdapter};
    use crate::onnx::TchOptions;

    /// A model over the size threshold gets its weights in an external-data file that onnxruntime reads back.
    #[test]
    fn large_models_are_written_with_external_data() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/generated/cnn_bn_legacy.onnx");
        assert!(fixture.is_file(), "fixtures missing: run `make fixtures`");
        let model = OnnxModel::load(&fixture, &crate::config::Limits::default()).unwrap();
        assert!(!model.uses_external_data());
        let tch = TchModel::new(
            &model,
            InputAdapter::identity(),
            tch::Device::Cpu,
            TchOptions::default(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("big.onnx");
        let written = write_back_with_threshold(&model, &tch, &out, &[], 1000).unwrap();
        let data = written.data.expect("external data written");
        assert_eq!(data, dir.path().join("big.onnx.data"));
        let reloaded = OnnxModel::load(&out, &crate::config::Limits::default()).unwrap();
        assert_eq!(reloaded.external_data_files(), ["big.onnx.data"]);
        let x = tch::Tensor::rand([4, 1, 28, 28], (tch::Kind::Float, tch::Device::Cpu));
        let mut ort = crate::onnx::OrtScorer::new(&out, InputAdapter::identity(), 1).unwrap();
        use crate::model::Scorer;
        let diff = (tch.forward(&x).unwrap() - ort.logits(&x).unwrap())
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff <= 1e-4, "{diff}");
    }
}
