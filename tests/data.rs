//! Dataset loading on real files: the real Fashion-MNIST from the Debian package, and IDX, CIFAR-10/100 binary and
//! npz files that the tests write into temporary directories with known contents; subsets, batching, augmentation,
//! and every error path.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use flate2::write::GzEncoder;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{WritableElement, WriteNpyExt};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use robustd::config::DatasetSpec;
use robustd::data::{
    crop_flip, known_names, Augmentation, BatchOptions, DataError, Dataset, Format, Profile, Split,
    CROP_PADDING,
};
use tch::{Kind, Tensor};
use tempfile::TempDir;

const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn spec(name: &str, path: Option<&Path>, train: usize, eval: usize, random: bool) -> DatasetSpec {
    DatasetSpec {
        name: name.into(),
        path: path.map(Path::to_path_buf),
        train_samples: train,
        eval_samples: eval,
        random_subset: random,
        ..DatasetSpec::default()
    }
}

/// The full Fashion-MNIST, loaded once per test binary from its standard location.
fn fashion() -> MutexGuard<'static, Dataset> {
    static FULL: OnceLock<Mutex<Dataset>> = OnceLock::new();
    FULL.get_or_init(|| {
        let dataset = Dataset::load(&spec("fashion-mnist", None, 0, 0, false), 0)
            .expect("Fashion-MNIST loads");
        Mutex::new(dataset)
    })
    .lock()
    .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn labels(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The raw bytes of a gzipped IDX file after its header, decoded here independently of the loader.
fn gunzip_payload(path: &Path, header_len: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    bytes.split_off(header_len)
}

// ---------------------------------------------------------------------------------------------------------------
// Real Fashion-MNIST (Debian package dataset-fashion-mnist)

#[test]
fn fashion_mnist_full_splits_have_the_published_sizes_classes_and_values() {
    let ds = fashion();
    assert_eq!(ds.name, "fashion-mnist");
    assert_eq!(ds.root, Path::new(FASHION_DIR));
    assert_eq!(ds.train.x.size(), [60000, 1, 28, 28]);
    assert_eq!(ds.test.x.size(), [10000, 1, 28, 28]);
    assert_eq!(ds.train.y.size(), [60000]);
    assert_eq!(ds.test.y.size(), [10000]);
    assert_eq!((ds.train.source_len, ds.test.source_len), (60000, 10000));
    assert_eq!(ds.train.x.kind(), Kind::Float);
    assert_eq!(ds.train.y.kind(), Kind::Int64);
    assert_eq!(ds.chw, [1, 28, 28]);
    assert_eq!(ds.num_classes, 10);
    assert_eq!(ds.class_names[0], "T-shirt/top");
    assert_eq!(ds.class_names[9], "Ankle boot");
    assert_eq!(ds.augmentation, Augmentation::None);
    assert_eq!(ds.train.indices, (0..60000).collect::<Vec<i64>>());

    for split in [&ds.train, &ds.test] {
        assert_eq!(split.x.min().double_value(&[]), 0.0);
        assert_eq!(split.x.max().double_value(&[]), 1.0);
        // Every class appears equally often: 6000 per class in train, 1000 in test.
        let counts = labels(&split.y.bincount::<Tensor>(None, 10));
        let per_class = split.len() as i64 / 10;
        assert_eq!(counts, vec![per_class; 10]);
    }
    // The first labels of each split as published (ankle boot, T-shirt, T-shirt, dress, ...).
    assert_eq!(
        labels(&ds.train.y.narrow(0, 0, 10)),
        [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    );
    assert_eq!(
        labels(&ds.test.y.narrow(0, 0, 10)),
        [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    );
}

#[test]
fn fashion_mnist_pixels_match_an_independent_decode_of_the_files() {
    let ds = fashion();
    let train_images = Path::new(FASHION_DIR).join("train-images-idx3-ubyte.gz");
    let raw = gunzip_payload(&train_images, 16);
    assert_eq!(raw.len(), 60000 * 784);
    for sample in [0usize, 1, 31337, 59999] {
        let expected: Vec<f32> = raw[sample * 784..(sample + 1) * 784]
            .iter()
            .map(|&b| f32::from(b) / 255.0)
            .collect();
        assert_eq!(
            floats(&ds.train.x.get(sample as i64)),
            expected,
            "sample {sample}"
        );
    }
    let test_labels = gunzip_payload(&Path::new(FASHION_DIR).join("t10k-labels-idx1-ubyte.gz"), 8);
    let expected: Vec<i64> = test_labels.iter().map(|&b| i64::from(b)).collect();
    assert_eq!(labels(&ds.test.y), expected);
}

#[test]
fn fashion_mnist_profile_normalization_matches_the_training_images() {
    let ds = fashion();
    let mean = ds.train.x.mean(Kind::Double).double_value(&[]);
    let std = ds
        .train
        .x
        .to_kind(Kind::Double)
        .std(false)
        .double_value(&[]);
    assert_eq!(ds.mean.len(), 1);
    assert!(
        (mean - f64::from(ds.mean[0])).abs() < 1e-4,
        "mean {mean} vs profile {}",
        ds.mean[0]
    );
    assert!(
        (std - f64::from(ds.std[0])).abs() < 1e-4,
        "std {std} vs profile {}",
        ds.std[0]
    );
}

#[test]
fn fashion_mnist_digests_are_the_sha256_of_each_file() {
    let ds = fashion();
    assert_eq!(ds.sources.len(), 4);
    for source in &ds.sources {
        let out = Command::new("sha256sum")
            .arg(&source.path)
            .output()
            .unwrap();
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            printed.split_whitespace().next().unwrap(),
            source.sha256,
            "{}",
            source.path.display()
        );
    }
    assert_eq!(ds.sha256.len(), 64);
    assert_eq!(ds.sha256, robustd::data::combined_sha256(&ds.sources));
}

#[test]
fn fashion_mnist_first_n_and_seeded_random_subsets() {
    let full = fashion();
    let first = Dataset::load(&spec("fashion-mnist", None, 1000, 300, false), 0).unwrap();
    assert_eq!(first.train.indices, (0..1000).collect::<Vec<i64>>());
    assert_eq!(first.test.indices, (0..300).collect::<Vec<i64>>());
    assert_eq!(
        max_abs_diff(&first.train.x, &full.train.x.narrow(0, 0, 1000)),
        0.0
    );
    assert_eq!(first.train.source_len, 60000);
    assert_eq!(first.sha256, full.sha256);

    let a = Dataset::load(&spec("fashion-mnist", None, 1000, 300, true), 7).unwrap();
    let b = Dataset::load(&spec("fashion-mnist", None, 1000, 300, true), 7).unwrap();
    let c = Dataset::load(&spec("fashion-mnist", None, 1000, 300, true), 8).unwrap();
    assert_eq!(a.train.indices, b.train.indices);
    assert_eq!(a.test.indices, b.test.indices);
    assert_ne!(a.train.indices, c.train.indices);
    assert_ne!(a.train.indices, first.train.indices);
    for (split, full_split, n) in [(&a.train, &full.train, 1000), (&a.test, &full.test, 300)] {
        assert_eq!(split.len(), n);
        assert!(
            split.indices.windows(2).all(|w| w[0] < w[1]),
            "sorted and unique"
        );
        assert!(*split.indices.last().unwrap() < full_split.len() as i64);
        let index = Tensor::from_slice(&split.indices);
        assert_eq!(
            max_abs_diff(&split.x, &full_split.x.index_select(0, &index)),
            0.0
        );
        assert_eq!(
            labels(&split.y),
            labels(&full_split.y.index_select(0, &index))
        );
    }
    // Train and test subsets come from independent streams: their positions are not the same draw.
    assert_ne!(a.train.indices[..300], a.test.indices[..]);
}

// ---------------------------------------------------------------------------------------------------------------
// Synthetic IDX files

fn idx_bytes(magic_type: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, magic_type, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

fn write_file(path: &Path, bytes: &[u8], gzip: bool) {
    let mut file = std::fs::File::create(path).unwrap();
    if gzip {
        let mut encoder = GzEncoder::new(file, flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap();
    } else {
        file.write_all(bytes).unwrap();
    }
}

/// Pixel value of pixel `p` of image `i` in the synthetic datasets.
fn pixel(i: usize, p: usize) -> u8 {
    ((i * 37 + p * 11) % 256) as u8
}

fn images(n: usize, pixels_per_image: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (0..pixels_per_image).map(move |p| pixel(i, p)))
        .collect()
}

struct IdxSplit<'a> {
    images: &'a str,
    labels: &'a str,
    n: usize,
    labels_values: Vec<u8>,
}

/// Writes an MNIST-like directory with `n_train`/`n_test` 28x28 images; returns the directory.
fn write_idx_dataset(dir: &Path, names: [&str; 4], n_train: usize, n_test: usize, gzip: bool) {
    let splits = [
        IdxSplit {
            images: names[0],
            labels: names[1],
            n: n_train,
            labels_values: (0..n_train).map(|i| (i % 10) as u8).collect(),
        },
        IdxSplit {
            images: names[2],
            labels: names[3],
            n: n_test,
            labels_values: (0..n_test).map(|i| ((i + 3) % 10) as u8).collect(),
        },
    ];
    for s in splits {
        write_file(
            &dir.join(s.images),
            &idx_bytes(8, &[s.n as u32, 28, 28], &images(s.n, 784)),
            gzip,
        );
        write_file(
            &dir.join(s.labels),
            &idx_bytes(8, &[s.n as u32], &s.labels_values),
            gzip,
        );
    }
}

const STANDARD_IDX: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

fn gz_names() -> [String; 4] {
    STANDARD_IDX.map(|n| format!("{n}.gz"))
}

fn load_mnist(dir: &Path) -> Result<Dataset, DataError> {
    Dataset::load(&spec("mnist", Some(dir), 0, 0, false), 0)
}

#[test]
fn idx_plain_and_gzipped_load_the_same_known_pixels_and_labels() {
    let plain = TempDir::new().unwrap();
    let gz = TempDir::new().unwrap();
    write_idx_dataset(plain.path(), STANDARD_IDX, 5, 3, false);
    let gz_names = gz_names();
    write_idx_dataset(
        gz.path(),
        gz_names.each_ref().map(String::as_str),
        5,
        3,
        true,
    );
    let a = load_mnist(plain.path()).unwrap();
    let b = load_mnist(gz.path()).unwrap();
    for ds in [&a, &b] {
        assert_eq!(ds.train.x.size(), [5, 1, 28, 28]);
        assert_eq!(ds.test.x.size(), [3, 1, 28, 28]);
        assert_eq!(labels(&ds.train.y), [0, 1, 2, 3, 4]);
        assert_eq!(labels(&ds.test.y), [3, 4, 5]);
        let expected: Vec<f32> = images(5, 784)
            .iter()
            .map(|&b| f32::from(b) / 255.0)
            .collect();
        assert_eq!(floats(&ds.train.x), expected);
        assert_eq!(
            ds.class_names,
            (0..10).map(|c| c.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(ds.mean, [0.1307]);
    }
    assert_eq!(max_abs_diff(&a.test.x, &b.test.x), 0.0);
    // The digests are of the files as stored, so plain and gzipped copies differ.
    assert_ne!(a.sha256, b.sha256);
    assert!(b.sources[0].path.ends_with("train-images-idx3-ubyte.gz"));
}

#[test]
fn idx_alternative_file_names_are_found() {
    let dir = TempDir::new().unwrap();
    let names = [
        "train-images.idx3-ubyte",
        "train-labels.idx1-ubyte",
        "test-images-idx3-ubyte.gz",
        "test-labels-idx1-ubyte.gz",
    ];
    // Gzip is detected from the content, so plain files named `.gz` load too.
    write_idx_dataset(dir.path(), names, 4, 2, false);
    let ds = load_mnist(dir.path()).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (4, 2));
}

#[test]
fn idx_errors_name_the_file_and_the_cause() {
    // Nothing there: the error lists where it looked and how to get the data.
    let empty = TempDir::new().unwrap();
    let err =
        Dataset::load(&spec("fashion-mnist", Some(empty.path()), 0, 0, false), 0).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
    assert!(
        msg.contains("apt-get install dataset-fashion-mnist"),
        "{msg}"
    );

    // One file missing: named.
    let dir = TempDir::new().unwrap();
    write_idx_dataset(dir.path(), STANDARD_IDX, 4, 2, false);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let msg = load_mnist(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("t10k-labels-idx1-ubyte.gz"), "{msg}");

    let case = |mutate: &dyn Fn(&Path)| -> DataError {
        let dir = TempDir::new().unwrap();
        write_idx_dataset(dir.path(), STANDARD_IDX, 4, 2, false);
        mutate(dir.path());
        load_mnist(dir.path()).unwrap_err()
    };
    let train_images = |d: &Path| d.join("train-images-idx3-ubyte");
    let train_labels = |d: &Path| d.join("train-labels-idx1-ubyte");

    // Truncated: the header promises 4 images, the file holds 3.5.
    let err = case(&|d| {
        let bytes = idx_bytes(8, &[4, 28, 28], &images(4, 784));
        write_file(&train_images(d), &bytes[..bytes.len() - 392], false);
    });
    match &err {
        DataError::Truncated {
            path,
            expected,
            actual,
            ..
        } => {
            assert!(path.ends_with("train-images-idx3-ubyte"));
            assert_eq!((*expected, *actual), (16 + 4 * 784, 16 + 4 * 784 - 392));
        }
        other => panic!("expected Truncated, got {other}"),
    }
    assert!(err.to_string().contains("truncated"), "{err}");

    // Truncated inside the header.
    let err = case(&|d| write_file(&train_labels(d), &[0, 0, 8], false));
    assert!(matches!(err, DataError::Truncated { .. }), "{err}");

    // Bytes after the data.
    let err = case(&|d| {
        let mut bytes = idx_bytes(8, &[4], &[0, 1, 2, 3]);
        bytes.extend_from_slice(&[7, 7]);
        write_file(&train_labels(d), &bytes, false);
    });
    assert!(
        matches!(err, DataError::TrailingBytes { extra: 2, .. }),
        "{err}"
    );

    // A labels file where images are expected: wrong magic.
    let err = case(&|d| {
        std::fs::copy(train_labels(d), train_images(d))
            .map(drop)
            .unwrap()
    });
    match &err {
        DataError::BadMagic { found, .. } => assert_eq!(*found, 0x0801),
        other => panic!("expected BadMagic, got {other}"),
    }
    assert!(err.to_string().contains("0x00000803"), "{err}");

    // Images of the wrong size.
    let err = case(&|d| {
        write_file(
            &train_images(d),
            &idx_bytes(8, &[4, 32, 32], &images(4, 1024)),
            false,
        )
    });
    assert!(matches!(err, DataError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("32x32"), "{err}");

    // A label outside 0..10.
    let err = case(&|d| write_file(&train_labels(d), &idx_bytes(8, &[4], &[1, 2, 10, 3]), false));
    match err {
        DataError::LabelOutOfRange {
            index,
            label,
            num_classes,
            ..
        } => {
            assert_eq!((index, label, num_classes), (2, 10, 10))
        }
        other => panic!("expected LabelOutOfRange, got {other}"),
    }

    // An empty split.
    let err = case(&|d| {
        write_file(
            &d.join("t10k-images-idx3-ubyte"),
            &idx_bytes(8, &[0, 28, 28], &[]),
            false,
        );
        write_file(
            &d.join("t10k-labels-idx1-ubyte"),
            &idx_bytes(8, &[0], &[]),
            false,
        );
    });
    assert!(
        err.to_string().contains("test split holds no samples"),
        "{err}"
    );

    // Fewer labels than images.
    let err = case(&|d| write_file(&train_labels(d), &idx_bytes(8, &[3], &[1, 2, 3]), false));
    match err {
        DataError::CountMismatch {
            n_images, n_labels, ..
        } => assert_eq!((n_images, n_labels), (4, 3)),
        other => panic!("expected CountMismatch, got {other}"),
    }
}

#[test]
fn idx_cut_or_corrupt_gzip_is_an_error_naming_the_file() {
    let case = |mutate: &dyn Fn(&mut Vec<u8>)| -> DataError {
        let dir = TempDir::new().unwrap();
        let gz_names = gz_names();
        write_idx_dataset(
            dir.path(),
            gz_names.each_ref().map(String::as_str),
            4,
            2,
            true,
        );
        let path = dir.path().join("train-images-idx3-ubyte.gz");
        let mut bytes = std::fs::read(&path).unwrap();
        mutate(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let err = load_mnist(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("train-images-idx3-ubyte.gz"),
            "{err}"
        );
        err
    };
    // Cut inside the compressed data: either the decoder or the IDX length check notices first.
    let err = case(&|b| b.truncate(b.len() / 2));
    assert!(
        matches!(err, DataError::Truncated { .. } | DataError::Gzip { .. }),
        "{err}"
    );
    // All pixels decode but the trailer (CRC-32 and length) is cut: still an error.
    let err = case(&|b| b.truncate(b.len() - 3));
    assert!(
        matches!(err, DataError::Gzip { decoded: 3152, .. }),
        "{err}"
    );
    // A wrong CRC-32 in the trailer.
    let err = case(&|b| {
        let at = b.len() - 8;
        b[at] ^= 0xff;
    });
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------------
// Synthetic CIFAR binaries

/// CIFAR records: label byte(s) then 3072 CHW pixel bytes; image `first + k` gets `labels[k]`.
fn cifar_records(first: usize, labels: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (k, label_bytes) in labels.iter().enumerate() {
        bytes.extend_from_slice(label_bytes);
        bytes.extend((0..3072).map(|p| pixel(first + k, p)));
    }
    bytes
}

fn write_cifar10(dir: &Path, per_batch: usize, n_test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for b in 0..5 {
        let labels: Vec<Vec<u8>> = (0..per_batch)
            .map(|k| vec![((b * per_batch + k) % 10) as u8])
            .collect();
        let bytes = cifar_records(b * per_batch, &labels);
        std::fs::write(dir.join(format!("data_batch_{}.bin", b + 1)), bytes).unwrap();
    }
    let labels: Vec<Vec<u8>> = (0..n_test).map(|k| vec![(9 - k % 10) as u8]).collect();
    std::fs::write(dir.join("test_batch.bin"), cifar_records(1000, &labels)).unwrap();
}

fn expected_cifar_image(i: usize) -> Vec<f32> {
    (0..3072).map(|p| f32::from(pixel(i, p)) / 255.0).collect()
}

#[test]
fn cifar10_binary_batches_load_in_order_with_chw_pixels() {
    let root = TempDir::new().unwrap();
    // The layout of the official archive: the files inside cifar-10-batches-bin/.
    write_cifar10(&root.path().join("cifar-10-batches-bin"), 2, 3);
    let ds = Dataset::load(&spec("cifar10", Some(root.path()), 0, 0, false), 0).unwrap();
    assert_eq!(ds.root, root.path().join("cifar-10-batches-bin"));
    assert_eq!(ds.train.x.size(), [10, 3, 32, 32]);
    assert_eq!(ds.test.x.size(), [3, 3, 32, 32]);
    assert_eq!(labels(&ds.train.y), (0..10).collect::<Vec<i64>>());
    assert_eq!(labels(&ds.test.y), [9, 8, 7]);
    assert_eq!(floats(&ds.train.x.get(7)), expected_cifar_image(7));
    assert_eq!(floats(&ds.test.x.get(2)), expected_cifar_image(1002));
    // CHW: the first 1024 bytes are the red plane, row-major.
    let red_row1_col2 = ds.train.x.double_value(&[7, 0, 1, 2]);
    assert_eq!(
        red_row1_col2,
        f64::from(f32::from(pixel(7, 32 + 2)) / 255.0)
    );
    let blue = ds.train.x.double_value(&[7, 2, 0, 0]);
    assert_eq!(blue, f64::from(f32::from(pixel(7, 2048)) / 255.0));
    assert_eq!(ds.num_classes, 10);
    assert_eq!(ds.class_names[0], "airplane");
    assert_eq!(ds.chw, [3, 32, 32]);
    assert_eq!(ds.mean.len(), 3);
    assert_eq!(ds.augmentation, Augmentation::CropFlip);
    assert_eq!(ds.sources.len(), 6);
}

#[test]
fn cifar100_uses_the_fine_label() {
    let dir = TempDir::new().unwrap();
    // Coarse labels 0..20 and fine labels 0..100 differ so that picking the wrong byte shows.
    let train: Vec<Vec<u8>> = [(19u8, 99u8), (0, 42), (5, 7), (3, 0)]
        .iter()
        .map(|&(c, f)| vec![c, f])
        .collect();
    let test: Vec<Vec<u8>> = vec![vec![1, 64], vec![2, 13]];
    std::fs::write(dir.path().join("train.bin"), cifar_records(0, &train)).unwrap();
    std::fs::write(dir.path().join("test.bin"), cifar_records(50, &test)).unwrap();
    let ds = Dataset::load(&spec("cifar100", Some(dir.path()), 0, 0, false), 0).unwrap();
    assert_eq!(labels(&ds.train.y), [99, 42, 7, 0]);
    assert_eq!(labels(&ds.test.y), [64, 13]);
    assert_eq!(ds.num_classes, 100);
    assert_eq!(ds.class_names.len(), 100);
    assert_eq!(ds.class_names[99], "worm");
    assert_eq!(floats(&ds.test.x.get(1)), expected_cifar_image(51));
}

#[test]
fn cifar_errors_name_the_file_and_the_cause() {
    let empty = TempDir::new().unwrap();
    let err = Dataset::load(&spec("cifar10", Some(empty.path()), 0, 0, false), 0).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::NotFound { .. }), "{msg}");
    assert!(
        msg.contains("data_batch_1.bin") && msg.contains("cifar-10-binary.tar.gz"),
        "{msg}"
    );
    assert!(
        msg.contains(
            &empty
                .path()
                .join("cifar-10-batches-bin")
                .display()
                .to_string()
        ),
        "{msg}"
    );

    let dir = TempDir::new().unwrap();
    write_cifar10(dir.path(), 2, 3);
    std::fs::remove_file(dir.path().join("data_batch_4.bin")).unwrap();
    let msg = Dataset::load(&spec("cifar10", Some(dir.path()), 0, 0, false), 0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("data_batch_4.bin"), "{msg}");

    // A partial record at the end.
    let dir = TempDir::new().unwrap();
    write_cifar10(dir.path(), 2, 3);
    let path = dir.path().join("test_batch.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    match Dataset::load(&spec("cifar10", Some(dir.path()), 0, 0, false), 0).unwrap_err() {
        DataError::Truncated {
            path: p,
            expected,
            actual,
            ..
        } => {
            assert_eq!(p, path);
            assert_eq!((expected, actual), (3 * 3073, 3 * 3073 - 100));
        }
        other => panic!("expected Truncated, got {other}"),
    }

    // Label 10 in CIFAR-10, fine label 100 in CIFAR-100.
    let dir = TempDir::new().unwrap();
    write_cifar10(dir.path(), 2, 3);
    std::fs::write(
        dir.path().join("data_batch_2.bin"),
        cifar_records(0, &[vec![3], vec![10]]),
    )
    .unwrap();
    match Dataset::load(&spec("cifar10", Some(dir.path()), 0, 0, false), 0).unwrap_err() {
        DataError::LabelOutOfRange {
            path,
            index,
            label,
            num_classes,
        } => {
            assert!(path.ends_with("data_batch_2.bin"));
            assert_eq!((index, label, num_classes), (1, 10, 10));
        }
        other => panic!("expected LabelOutOfRange, got {other}"),
    }
    let dir = TempDir::new().unwrap();
    std::fs::write(
        dir.path().join("train.bin"),
        cifar_records(0, &[vec![0, 100]]),
    )
    .unwrap();
    std::fs::write(dir.path().join("test.bin"), cifar_records(0, &[vec![0, 1]])).unwrap();
    let err = Dataset::load(&spec("cifar100", Some(dir.path()), 0, 0, false), 0).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                label: 100,
                num_classes: 100,
                ..
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// npz archives

fn npy<A: WritableElement>(shape: &[usize], values: Vec<A>) -> Vec<u8> {
    let array = ArrayD::from_shape_vec(IxDyn(shape), values).unwrap();
    let mut bytes = Vec::new();
    array.write_npy(&mut bytes).unwrap();
    bytes
}

/// Writes an `.npz` the way `numpy.savez` (stored) or `numpy.savez_compressed` (deflated) does.
fn write_npz(path: &Path, arrays: &[(&str, Vec<u8>)], compressed: bool) {
    let method = if compressed {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in arrays {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn load_npz(path: &Path) -> Result<Dataset, DataError> {
    Dataset::load(&spec("npz", Some(path), 0, 0, false), 0)
}

/// `n` images of `h x w x c` (NHWC) whose value encodes (sample, row, col, channel).
fn nhwc_values(n: usize, h: usize, w: usize, c: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    v.push((i * 50 + y * 10 + x * 3 + ch) as u8);
                }
            }
        }
    }
    v
}

#[test]
fn npz_uint8_nhwc_with_test_arrays_is_transposed_to_nchw() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("rgb.npz");
    write_npz(
        &path,
        &[
            ("x", npy(&[4, 5, 6, 3], nhwc_values(4, 5, 6, 3))),
            ("y", npy(&[4], vec![0i32, 2, 1, 2])),
            ("x_test", npy(&[2, 5, 6, 3], nhwc_values(2, 5, 6, 3))),
            ("y_test", npy(&[2, 1], vec![1u8, 0])),
        ],
        true,
    );
    let ds = load_npz(&path).unwrap();
    assert_eq!(ds.train.x.size(), [4, 3, 5, 6]);
    assert_eq!(ds.test.x.size(), [2, 3, 5, 6]);
    assert_eq!(ds.chw, [3, 5, 6]);
    for (i, y, x, ch) in [(0, 0, 0, 0), (3, 4, 5, 2), (2, 1, 3, 1)] {
        let expected = f64::from(((i * 50 + y * 10 + x * 3 + ch) as u8) as f32 / 255.0);
        assert_eq!(
            ds.train
                .x
                .double_value(&[i as i64, ch as i64, y as i64, x as i64]),
            expected
        );
    }
    assert_eq!(labels(&ds.train.y), [0, 2, 1, 2]);
    assert_eq!(labels(&ds.test.y), [1, 0]);
    assert_eq!(ds.num_classes, 3);
    assert_eq!(ds.class_names, ["0", "1", "2"]);
    assert_eq!(ds.test.indices, [0, 1]);
    assert!(ds.mean.is_empty());
    assert_eq!(ds.augmentation, Augmentation::CropFlip);
    assert_eq!(
        ds.sources[0].sha256,
        robustd::data::sha256_file(&path).unwrap().sha256
    );
}

#[test]
fn npz_float32_nchw_without_test_arrays_splits_off_the_last_fifth() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("gray.npz");
    let values: Vec<f32> = (0..10 * 4 * 4).map(|v| (v % 17) as f32 / 16.0).collect();
    write_npz(
        &path,
        &[
            ("x", npy(&[10, 1, 4, 4], values.clone())),
            ("y", npy(&[10], (0..10i64).collect())),
        ],
        false,
    );
    let ds = load_npz(&path).unwrap();
    assert_eq!(ds.train.x.size(), [8, 1, 4, 4]);
    assert_eq!(ds.test.x.size(), [2, 1, 4, 4]);
    assert_eq!(ds.train.indices, (0..8).collect::<Vec<i64>>());
    assert_eq!(ds.test.indices, [8, 9]);
    assert_eq!(labels(&ds.test.y), [8, 9]);
    assert_eq!(floats(&ds.test.x), values[8 * 16..]);
    assert_eq!(ds.num_classes, 10);
    assert_eq!(ds.augmentation, Augmentation::None);
    assert_eq!(robustd::data::NPZ_TEST_SPLIT_DIVISOR, 5);
}

#[test]
fn npz_keras_names_three_dim_images_and_label_dtypes() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("keras.npz");
    write_npz(
        &path,
        &[
            (
                "x_train",
                npy(&[3, 2, 2], vec![0u8, 255, 51, 102, 1, 2, 3, 4, 9, 8, 7, 6]),
            ),
            ("y_train", npy(&[3], vec![4u16, 0, 1])),
            ("x_test", npy(&[1, 2, 2], vec![255u8; 4])),
            ("y_test", npy(&[1], vec![2i8])),
        ],
        true,
    );
    let ds = load_npz(&path).unwrap();
    assert_eq!(ds.train.x.size(), [3, 1, 2, 2]);
    assert_eq!(floats(&ds.train.x.get(0)), [0.0, 1.0, 0.2, 0.4]);
    assert_eq!(labels(&ds.train.y), [4, 0, 1]);
    assert_eq!(ds.num_classes, 5);
}

#[test]
fn npz_written_by_numpy_savez_compressed_loads() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("numpy.npz");
    let script = "import sys, numpy as np\n\
        x = (np.arange(6*8*8*3) % 256).astype(np.uint8).reshape(6, 8, 8, 3)\n\
        np.savez_compressed(sys.argv[1], x=x, y=np.array([0, 1, 2, 0, 1, 2]))\n";
    let status = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .status();
    let status = status.unwrap_or_else(|e| panic!("{} (run `make setup`): {e}", python.display()));
    assert!(status.success());
    let ds = load_npz(&path).unwrap();
    // ceil(6 / 5) = 2 test samples.
    assert_eq!(ds.train.x.size(), [4, 3, 8, 8]);
    assert_eq!(ds.test.indices, [4, 5]);
    // x[i, y, x, c] = (i*192 + y*24 + x*3 + c) % 256, now at [i, c, y, x].
    let v = ds.train.x.double_value(&[2, 1, 3, 4]);
    assert_eq!(
        v,
        f64::from(((2 * 192 + 3 * 24 + 4 * 3 + 1) % 256) as f32 / 255.0)
    );
    assert_eq!(labels(&ds.train.y), [0, 1, 2, 0]);
}

#[test]
fn npz_errors_name_the_array_and_the_cause() {
    let dir = TempDir::new().unwrap();
    let case = |name: &str, arrays: Vec<(&str, Vec<u8>)>| -> DataError {
        let path = dir.path().join(format!("{name}.npz"));
        write_npz(&path, &arrays, false);
        load_npz(&path).unwrap_err()
    };
    let y4 = || npy(&[4], vec![0i64, 1, 0, 1]);

    let err = case(
        "nan",
        vec![
            (
                "x",
                npy(&[4, 1, 2, 2], {
                    let mut v = vec![0.5f32; 16];
                    v[9] = f32::NAN;
                    v
                }),
            ),
            ("y", y4()),
        ],
    );
    assert!(matches!(err, DataError::BadPixels { .. }), "{err}");
    assert!(err.to_string().contains("sample 2 holds NaN"), "{err}");

    let err = case(
        "big",
        vec![
            (
                "x",
                npy(&[4, 1, 2, 2], {
                    let mut v = vec![0.5f32; 16];
                    v[15] = 1.5;
                    v
                }),
            ),
            ("y", y4()),
        ],
    );
    assert!(err.to_string().contains("sample 3 holds 1.5"), "{err}");

    let err = case(
        "ambiguous",
        vec![("x", npy(&[4, 3, 5, 3], vec![0u8; 180])), ("y", y4())],
    );
    match &err {
        DataError::Layout { shape, key, .. } => {
            assert_eq!((shape.as_slice(), key.as_str()), (&[4, 3, 5, 3][..], "x"))
        }
        other => panic!("expected Layout, got {other}"),
    }
    assert!(err.to_string().contains("both axis 1 and axis 3"), "{err}");
    let err = case(
        "nochannels",
        vec![("x", npy(&[4, 5, 5, 5], vec![0u8; 500])), ("y", y4())],
    );
    assert!(
        err.to_string().contains("neither axis 1 nor axis 3"),
        "{err}"
    );
    let err = case(
        "rank2",
        vec![("x", npy(&[4, 25], vec![0u8; 100])), ("y", y4())],
    );
    assert!(matches!(err, DataError::Layout { .. }), "{err}");

    let err = case(
        "intpixels",
        vec![("x", npy(&[4, 1, 2, 2], vec![0i32; 16])), ("y", y4())],
    );
    assert!(matches!(err, DataError::Dtype { .. }), "{err}");
    assert!(err.to_string().contains("<i4"), "{err}");
    let err = case(
        "floatlabels",
        vec![
            ("x", npy(&[4, 1, 2, 2], vec![0u8; 16])),
            ("y", npy(&[4], vec![0f32; 4])),
        ],
    );
    assert!(
        matches!(err, DataError::Dtype { ref key, .. } if key == "y"),
        "{err}"
    );
    let err = case(
        "onehot",
        vec![
            ("x", npy(&[4, 1, 2, 2], vec![0u8; 16])),
            ("y", npy(&[4, 2], vec![0u8; 8])),
        ],
    );
    assert!(matches!(err, DataError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("argmax"), "{err}");

    let err = case(
        "negative",
        vec![
            ("x", npy(&[4, 1, 2, 2], vec![0u8; 16])),
            ("y", npy(&[4], vec![0i64, 1, -1, 1])),
        ],
    );
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 2,
                label: -1,
                ..
            }
        ),
        "{err}"
    );

    let err = case(
        "count",
        vec![
            ("x", npy(&[4, 1, 2, 2], vec![0u8; 16])),
            ("y", npy(&[3], vec![0i64, 1, 0])),
        ],
    );
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                n_images: 4,
                n_labels: 3,
                ..
            }
        ),
        "{err}"
    );

    let err = case("noy", vec![("x", npy(&[4, 1, 2, 2], vec![0u8; 16]))]);
    match &err {
        DataError::MissingArray { key, present, .. } => {
            assert_eq!((key.as_str(), present.as_str()), ("y", "x"))
        }
        other => panic!("expected MissingArray, got {other}"),
    }
    let err = case(
        "half_test",
        vec![
            ("x", npy(&[4, 1, 2, 2], vec![0u8; 16])),
            ("y", y4()),
            ("x_test", npy(&[1, 1, 2, 2], vec![0u8; 4])),
        ],
    );
    assert!(
        matches!(err, DataError::MissingArray { ref key, .. } if key == "y_test"),
        "{err}"
    );
    let err = case(
        "test_shape",
        vec![
            ("x", npy(&[4, 1, 2, 2], vec![0u8; 16])),
            ("y", y4()),
            ("x_test", npy(&[1, 1, 3, 4], vec![0u8; 12])),
            ("y_test", npy(&[1], vec![0i64])),
        ],
    );
    assert!(matches!(err, DataError::Shape { .. }), "{err}");
    let err = case(
        "one",
        vec![
            ("x", npy(&[1, 1, 2, 2], vec![0u8; 4])),
            ("y", npy(&[1], vec![0i64])),
        ],
    );
    assert!(err.to_string().contains("at least 2"), "{err}");

    // Not a zip archive at all, and a truncated one.
    let path = dir.path().join("text.npz");
    std::fs::write(&path, "not a zip").unwrap();
    assert!(matches!(
        load_npz(&path).unwrap_err(),
        DataError::Zip { .. }
    ));
    let good = dir.path().join("good.npz");
    write_npz(
        &good,
        &[("x", npy(&[4, 1, 2, 2], vec![0u8; 16])), ("y", y4())],
        false,
    );
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 30]).unwrap();
    assert!(matches!(
        load_npz(&path).unwrap_err(),
        DataError::Zip { .. }
    ));

    // No path, and a path that does not exist.
    let err = Dataset::load(&spec("npz", None, 0, 0, false), 0).unwrap_err();
    assert!(matches!(err, DataError::NpzPathMissing), "{err}");
    let err = load_npz(&dir.path().join("absent.npz")).unwrap_err();
    assert!(
        matches!(err, DataError::NotFound { .. }) && err.to_string().contains("absent.npz"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Names, profiles, subsets on synthetic data

#[test]
fn built_in_profiles_parse_and_unknown_names_are_refused() {
    assert_eq!(
        known_names(),
        [
            "fashion-mnist",
            "mnist",
            "cifar10",
            "cifar100",
            "npz",
            "folder",
            "manifest"
        ]
    );
    for name in ["fashion-mnist", "mnist", "cifar10", "cifar100"] {
        let p = Profile::built_in(name).unwrap();
        assert_eq!(p.name, name);
        assert_eq!(p.class_names.len() as i64, p.classes);
        assert_eq!(p.mean.len(), p.shape[0] as usize);
        assert!(!p.locations.is_empty() && !p.how_to_get.is_empty());
    }
    assert_eq!(
        Profile::built_in("cifar100").unwrap().format,
        Format::Cifar100
    );
    assert_eq!(
        Profile::built_in("fashion-mnist").unwrap().locations[0],
        PathBuf::from(FASHION_DIR)
    );
    let err = Dataset::load(&spec("imagenet", None, 0, 0, false), 0).unwrap_err();
    assert!(matches!(err, DataError::UnknownDataset { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("fashion-mnist, mnist, cifar10, cifar100, npz, folder, manifest"),
        "{err}"
    );
}

#[test]
fn subsets_on_synthetic_data_honour_counts_and_seeds() {
    let dir = TempDir::new().unwrap();
    write_idx_dataset(dir.path(), STANDARD_IDX, 50, 20, false);
    let load = |train, eval, random, seed| {
        Dataset::load(&spec("mnist", Some(dir.path()), train, eval, random), seed).unwrap()
    };
    let first = load(7, 5, false, 0);
    assert_eq!(first.train.indices, (0..7).collect::<Vec<i64>>());
    assert_eq!(labels(&first.train.y), [0, 1, 2, 3, 4, 5, 6]);
    // More than the split holds: everything.
    let all = load(500, 0, false, 0);
    assert_eq!((all.train.len(), all.test.len()), (50, 20));
    let a = load(10, 5, true, 3);
    let b = load(10, 5, true, 3);
    assert_eq!(a.train.indices, b.train.indices);
    assert_eq!(a.test.indices, b.test.indices);
    let seeds_differ = (4..8).any(|seed| load(10, 5, true, seed).train.indices != a.train.indices);
    assert!(seeds_differ);
    // Labels of the synthetic set are i % 10, so they follow from the chosen indices.
    let expected: Vec<i64> = a.train.indices.iter().map(|i| i % 10).collect();
    assert_eq!(labels(&a.train.y), expected);
    let selected = a.train.select(&[2, 0]).unwrap();
    assert_eq!(selected.indices, [a.train.indices[2], a.train.indices[0]]);
    assert!(matches!(
        a.train.select(&[10]),
        Err(DataError::Invalid { .. })
    ));
}

// ---------------------------------------------------------------------------------------------------------------
// Batching and augmentation

fn synthetic_split(n: i64) -> Split {
    let x = Tensor::arange(n * 3 * 8 * 8, (Kind::Float, tch::Device::Cpu)).view([n, 3, 8, 8])
        / (n * 192) as f64;
    Split {
        x,
        y: Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)).remainder(10),
        indices: (100..100 + n).collect(),
        source_len: n as usize,
        source: None,
    }
}

/// Visits every batch, returning the concatenated positions and checking x and y against the split.
fn visit(split: &Split, options: &BatchOptions) -> (Vec<i64>, Vec<i64>) {
    let mut positions = Vec::new();
    let mut sizes = Vec::new();
    let batches = split.batches(options).unwrap();
    let expected_batches = batches.len();
    for batch in batches {
        let batch = batch.unwrap();
        let pos = labels(&batch.positions);
        assert_eq!(
            labels(&batch.y),
            labels(&split.y.index_select(0, &batch.positions))
        );
        if options.augmentation == Augmentation::None {
            assert_eq!(
                max_abs_diff(&batch.x, &split.x.index_select(0, &batch.positions)),
                0.0
            );
        }
        sizes.push(pos.len() as i64);
        positions.extend(pos);
    }
    assert_eq!(sizes.len(), expected_batches);
    (positions, sizes)
}

#[test]
fn eval_batches_cover_the_split_in_order() {
    let split = synthetic_split(23);
    let (positions, sizes) = visit(&split, &BatchOptions::eval(8));
    assert_eq!(positions, (0..23).collect::<Vec<i64>>());
    assert_eq!(sizes, [8, 8, 7]);
    let mut options = BatchOptions::eval(8);
    options.drop_last = true;
    assert_eq!(visit(&split, &options).1, [8, 8]);
    assert!(matches!(
        split.batches(&BatchOptions::eval(0)),
        Err(DataError::Invalid { .. })
    ));
}

#[test]
fn batches_are_copies_that_callers_may_modify_in_place() {
    let split = synthetic_split(10);
    let before = split.x.copy();
    for options in [
        BatchOptions::eval(4),
        BatchOptions::train(4, Augmentation::None, 0, 0),
    ] {
        for batch in split.batches(&options).unwrap() {
            let mut x = batch.unwrap().x;
            let _ = x.fill_(7.0);
        }
    }
    assert_eq!(max_abs_diff(&split.x, &before), 0.0);
}

#[test]
fn batches_and_augmentation_run_on_the_best_available_device() {
    let device = tch::Device::cuda_if_available();
    let split = synthetic_split(12).to_device(device).unwrap();
    assert_eq!(split.x.device(), device);
    let options = BatchOptions::train(5, Augmentation::CropFlip, 3, 0);
    let on_device: Vec<Tensor> = split
        .batches(&options)
        .unwrap()
        .map(|b| b.unwrap().x)
        .collect();
    let cpu = synthetic_split(12);
    let on_cpu: Vec<Tensor> = cpu
        .batches(&options)
        .unwrap()
        .map(|b| b.unwrap().x)
        .collect();
    for (d, c) in on_device.iter().zip(&on_cpu) {
        assert_eq!(d.device(), device);
        // The same seed gives the same crops and flips on every device.
        assert_eq!(max_abs_diff(&d.to_device(tch::Device::Cpu), c), 0.0);
    }
}

#[test]
fn shuffled_batches_are_a_permutation_fixed_by_seed_and_epoch() {
    let split = synthetic_split(23);
    let run = |seed, epoch| {
        visit(
            &split,
            &BatchOptions::train(5, Augmentation::None, seed, epoch),
        )
        .0
    };
    let a = run(1, 0);
    assert_eq!(a, run(1, 0));
    assert_ne!(a, run(1, 1));
    assert_ne!(a, run(2, 0));
    assert_ne!(a, (0..23).collect::<Vec<i64>>());
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..23).collect::<Vec<i64>>());

    // With augmentation the whole batch content is reproducible too.
    let options = BatchOptions::train(5, Augmentation::CropFlip, 9, 2);
    let first: Vec<Tensor> = split
        .batches(&options)
        .unwrap()
        .map(|b| b.unwrap().x)
        .collect();
    let second: Vec<Tensor> = split
        .batches(&options)
        .unwrap()
        .map(|b| b.unwrap().x)
        .collect();
    for (p, q) in first.iter().zip(&second) {
        assert_eq!(max_abs_diff(p, q), 0.0);
    }
}

/// The crop of the zero-padded `img` `[C, H, W]` at `(dy, dx)`, optionally mirrored.
fn reference_crop(img: &Tensor, dy: i64, dx: i64, flip: bool) -> Tensor {
    let (_, h, w) = img.size3().unwrap();
    let p = CROP_PADDING;
    let padded = img.constant_pad_nd([p, p, p, p]);
    let crop = padded.narrow(1, dy, h).narrow(2, dx, w);
    if flip {
        crop.flip([2])
    } else {
        crop
    }
}

#[test]
fn crop_flip_keeps_shape_and_range_and_each_output_is_a_shifted_or_mirrored_input() {
    let split = synthetic_split(32);
    let x = &split.x;
    let out = crop_flip(x, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
    assert_eq!(out.size(), x.size());
    assert_eq!(out.kind(), Kind::Float);
    assert!(out.min().double_value(&[]) >= 0.0 && out.max().double_value(&[]) <= 1.0);
    let mut flips = 0;
    let mut shifted = 0;
    for i in 0..32 {
        let (img, aug) = (x.get(i), out.get(i));
        let found = (0..=2 * CROP_PADDING)
            .flat_map(|dy| {
                (0..=2 * CROP_PADDING).flat_map(move |dx| [(dy, dx, false), (dy, dx, true)])
            })
            .find(|&(dy, dx, flip)| max_abs_diff(&reference_crop(&img, dy, dx, flip), &aug) == 0.0);
        let (dy, dx, flip) =
            found.unwrap_or_else(|| panic!("sample {i} is no crop/flip of its input"));
        flips += usize::from(flip);
        shifted += usize::from((dy, dx) != (CROP_PADDING, CROP_PADDING));
    }
    assert!((4..=28).contains(&flips), "{flips} of 32 flipped");
    assert!(shifted >= 16, "{shifted} of 32 shifted");
    let again = crop_flip(x, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
    assert_eq!(max_abs_diff(&out, &again), 0.0);
}

#[test]
fn augmentation_setting_resolves_auto_by_dataset() {
    assert_eq!(
        Augmentation::resolve("auto", Augmentation::CropFlip).unwrap(),
        Augmentation::CropFlip
    );
    assert_eq!(
        Augmentation::resolve("auto", Augmentation::None).unwrap(),
        Augmentation::None
    );
    assert_eq!(
        Augmentation::resolve("none", Augmentation::CropFlip).unwrap(),
        Augmentation::None
    );
    assert_eq!(
        Augmentation::resolve("crop-flip", Augmentation::None)
            .unwrap()
            .name(),
        "crop-flip"
    );
    let err = Augmentation::resolve("mixup", Augmentation::None).unwrap_err();
    assert!(matches!(err, DataError::UnknownAugmentation(_)) && err.to_string().contains("mixup"));
    assert_eq!(
        Profile::built_in("cifar10").unwrap().augmentation,
        Augmentation::CropFlip
    );
    assert_eq!(
        Profile::built_in("mnist").unwrap().augmentation,
        Augmentation::None
    );
}
