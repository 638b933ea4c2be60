//! A cheap, bounds-checked look at an ONNX file's protobuf wire format — enough for the daemon's intake and the
//! report before any engine loads the model: IR version, default-domain opset, producer, initializer parameter
//! count, and the external-data files the model references (so intake waits for a `.onnx.data` companion).
//! It decodes only ModelProto → GraphProto → TensorProto → StringStringEntryProto, never recurses further, and
//! never trusts a length it has not checked against the buffer; hostile bytes produce an error, not a panic.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not a readable ONNX model: {message} (at byte {offset})")]
pub struct ScanError {
    pub offset: usize,
    pub message: String,
}

/// What the scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelScan {
    pub ir_version: Option<i64>,
    /// Version of the default (`ai.onnx`) operator set.
    pub opset: Option<i64>,
    pub producer: Option<String>,
    /// Scalars in all initializers (saturating).
    pub parameters: u64,
    pub initializers: usize,
    /// `location` values of external-data initializers, deduplicated, in order of first use.
    pub external_locations: Vec<String>,
}

/// Scans a serialized ModelProto.
pub fn scan_model(bytes: &[u8]) -> Result<ModelScan, ScanError> {
    let mut scan = ModelScan::default();
    let mut graph_seen = false;
    for field in Fields::new(bytes, 0) {
        let (number, value, offset) = field?;
        match (number, value) {
            (1, Wire::Varint(v)) => scan.ir_version = Some(v as i64),
            (2, Wire::Bytes(b)) => scan.producer = Some(String::from_utf8_lossy(b).into_owned()),
            (7, Wire::Bytes(b)) => {
                graph_seen = true;
                scan_graph(b, offset, &mut scan)?;
            }
            (8, Wire::Bytes(b)) => {
                let (mut domain, mut version) = (String::new(), None);
                for f in Fields::new(b, offset) {
                    match f? {
                        (1, Wire::Bytes(d), _) => domain = String::from_utf8_lossy(d).into_owned(),
                        (2, Wire::Varint(v), _) => version = Some(v as i64),
                        _ => {}
                    }
                }
                if domain.is_empty() || domain == "ai.onnx" {
                    scan.opset = version;
                }
            }
            _ => {}
        }
    }
    if !graph_seen || scan.ir_version.is_none() {
        return Err(ScanError {
            offset: 0,
            message: "no ModelProto graph and ir_version found".into(),
        });
    }
    Ok(scan)
}

fn scan_graph(bytes: &[u8], base: usize, scan: &mut ModelScan) -> Result<(), ScanError> {
    for field in Fields::new(bytes, base) {
        if let (5, Wire::Bytes(tensor), offset) = field? {
            scan.initializers += 1;
            scan_tensor(tensor, offset, scan)?;
        }
    }
    Ok(())
}

fn scan_tensor(bytes: &[u8], base: usize, scan: &mut ModelScan) -> Result<(), ScanError> {
    let mut elements: u64 = 1;
    let mut external = false;
    let mut location = None;
    for field in Fields::new(bytes, base) {
        let (number, value, offset) = field?;
        match (number, value) {
            (1, Wire::Varint(d)) => elements = elements.saturating_mul(dim(d as i64, offset)?),
            (1, Wire::Bytes(packed)) => {
                let mut at = 0;
                while at < packed.len() {
                    let (d, used) = varint(&packed[at..], offset + at)?;
                    elements = elements.saturating_mul(dim(d as i64, offset + at)?);
                    at += used;
                }
            }
            (13, Wire::Bytes(entry)) => {
                let (mut key, mut value) = (None, None);
                for f in Fields::new(entry, offset) {
                    match f? {
                        (1, Wire::Bytes(k), _) => key = Some(k),
                        (2, Wire::Bytes(v), _) => value = Some(v),
                        _ => {}
                    }
                }
                if key == Some(b"location".as_slice()) {
                    location = value.map(|v| String::from_utf8_lossy(v).into_owned());
                }
            }
            (14, Wire::Varint(1)) => external = true,
            _ => {}
        }
    }
    scan.parameters = scan.parameters.saturating_add(elements);
    if external {
        let location = location.ok_or_else(|| ScanError {
            offset: base,
            message: "an initializer stored externally has no `location`".into(),
        })?;
        if !scan.external_locations.contains(&location) {
            scan.external_locations.push(location);
        }
    }
    Ok(())
}

fn dim(d: i64, offset: usize) -> Result<u64, ScanError> {
    u64::try_from(d).map_err(|_| ScanError {
        offset,
        message: format!("negative initializer dimension {d}"),
    })
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Iterates the fields of one message: `(field number, value, absolute offset of the value)`.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
    base: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self {
            buf,
            at: 0,
            base,
            failed: false,
        }
    }

    fn next_field(&mut self) -> Result<(u64, Wire<'a>, usize), ScanError> {
        let (tag, used) = varint(&self.buf[self.at..], self.base + self.at)?;
        self.at += used;
        let number = tag >> 3;
        let here = self.base + self.at;
        let err = |message: String| ScanError {
            offset: here,
            message,
        };
        if number == 0 {
            return Err(err("field number 0".into()));
        }
        let value = match tag & 7 {
            0 => {
                let (v, used) = varint(&self.buf[self.at..], here)?;
                self.at += used;
                Wire::Varint(v)
            }
            1 | 5 => {
                let width = if tag & 7 == 1 { 8 } else { 4 };
                if self.buf.len() - self.at < width {
                    return Err(err("fixed-width value past the end".into()));
                }
                self.at += width;
                Wire::Fixed
            }
            2 => {
                let (len, used) = varint(&self.buf[self.at..], here)?;
                self.at += used;
                let remaining = (self.buf.len() - self.at) as u64;
                if len > remaining {
                    return Err(err(format!(
                        "field {number} claims {len} bytes, {remaining} remain (truncated file?)"
                    )));
                }
                let bytes = &self.buf[self.at..self.at + len as usize];
                self.at += len as usize;
                Wire::Bytes(bytes)
            }
            other => return Err(err(format!("unsupported wire type {other}"))),
        };
        Ok((number, value, here))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>, usize), ScanError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.buf.len() {
            return None;
        }
        let item = self.next_field();
        self.failed = item.is_err();
        Some(item)
    }
}

fn varint(buf: &[u8], offset: usize) -> Result<(u64, usize), ScanError> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(ScanError {
        offset,
        message: "malformed or truncated varint".into(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/generated")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run `make fixtures`)", p.display()))
    }

    #[test]
    fn finds_opset_parameters_and_external_data_of_exported_models() {
        let legacy = scan_model(&fixture("mlp_legacy.onnx")).unwrap();
        assert!(legacy.external_locations.is_empty());
        assert!(legacy.opset.is_some_and(|v| v >= 7), "{legacy:?}");
        let dynamo = scan_model(&fixture("mlp_dynamo.onnx")).unwrap();
        assert_eq!(
            dynamo.external_locations,
            vec!["mlp_dynamo.onnx.data".to_string()]
        );
        // The fixture MLP is Linear(784, 64) -> ReLU -> Linear(64, 10); the dynamo exporter adds a 2-element
        // shape constant for the Flatten.
        let weights = 784 * 64 + 64 + 64 * 10 + 10;
        assert_eq!(legacy.parameters, weights);
        assert_eq!(dynamo.parameters, weights + 2);
    }

    #[test]
    fn truncated_and_garbage_inputs_are_errors_not_panics() {
        let bytes = fixture("cnn_bn_legacy.onnx");
        for cut in [1, 7, 100, bytes.len() / 2, bytes.len() - 1] {
            assert!(scan_model(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(scan_model(b"this is not an onnx file at all").is_err());
        assert!(scan_model(&[0xff; 64]).is_err());
        assert!(scan_model(&[]).is_err());
    }
}
