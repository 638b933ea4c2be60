//! Image-file datasets (`folder`, `manifest`) on real files generated at setup (scripts/image_fixtures.py):
//! Fashion-MNIST test images as PNG and JPEG in class folders, and RGB images of odd sizes, orientations and
//! formats made with Pillow. Checks the sample lists and the decoded, preprocessed tensors against torchvision's
//! `ImageFolder` + transforms on the same files, streaming determinism, the decode cache, and every refusal
//! (empty class, missing class, corrupt file, label out of range, escaping paths, channel mismatch).

#[path = "fixtures/mod.rs"]
mod fixtures;

use std::path::{Path, PathBuf};

use robustd::config::{Config, CorruptPolicy, Interpolation, ResizeMode};
use robustd::data::{Augmentation, BatchOptions, DataError, Dataset};
use serde::Deserialize;
use tch::{Kind, Tensor};

use fixtures::copy_dir;

fn images_dir() -> PathBuf {
    fixtures::generated("images/parity.json")
        .parent()
        .unwrap()
        .to_path_buf()
}

#[derive(Deserialize)]
struct Case {
    folder: String,
    split: String,
    classes: Vec<String>,
    files: Vec<String>,
    labels: Vec<i64>,
    shape: Vec<i64>,
}

fn parity_cases() -> std::collections::BTreeMap<String, Case> {
    let text = std::fs::read_to_string(images_dir().join("parity.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// torchvision's output for a case as uint8 `[N, C, H, W]`.
fn reference(name: &str) -> Tensor {
    use ndarray_npy::ReadNpyExt;
    let path = images_dir().join("parity").join(format!("{name}.npy"));
    let array = ndarray::ArrayD::<u8>::read_npy(std::fs::File::open(&path).unwrap()).unwrap();
    let shape: Vec<i64> = array.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(array.as_slice().unwrap()).view(shape.as_slice())
}

/// A config reading `dir` as `name` (folder or manifest), every sample, one decode thread.
fn config(name: &str, dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.dataset.name = name.into();
    cfg.dataset.path = Some(dir.to_path_buf());
    cfg.dataset.train_samples = 0;
    cfg.dataset.eval_samples = 0;
    cfg.dataset.loader_threads = 1;
    cfg.runtime.threads = 1;
    cfg
}

fn open(cfg: &Config, chw: [i64; 3]) -> Result<Dataset, DataError> {
    Dataset::open(cfg, Some(chw))
}

/// Every image of a split in split order, as uint8 (robustd's output × 255, exact).
fn all_bytes(split: &robustd::data::Split) -> Tensor {
    let all: Vec<i64> = (0..split.len() as i64).collect();
    (split.images(&all).unwrap() * 255.0)
        .round()
        .to_kind(Kind::Int16)
}

/// (max, mean) absolute difference in 1/255 steps.
fn diff(ours: &Tensor, theirs: &Tensor) -> (i64, f64) {
    let d = (ours - theirs.to_kind(Kind::Int16)).abs();
    (
        d.max().int64_value(&[]),
        d.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]),
    )
}

/// Opens the case's folder with the preprocessing its torchvision transform describes and compares the tensors.
fn parity(name: &str, setup: impl Fn(&mut Config), chw: [i64; 3]) -> (i64, f64) {
    let cases = parity_cases();
    let case = &cases[name];
    let mut cfg = config("folder", &images_dir().join(&case.folder));
    setup(&mut cfg);
    let ds = open(&cfg, chw).unwrap_or_else(|e| panic!("{name}: {e}"));
    let split = if case.split == "train" {
        &ds.train
    } else {
        &ds.test
    };
    assert_eq!(ds.class_names, case.classes, "{name}: classes");
    let files: Vec<String> = (0..split.len())
        .map(|p| split.file(p).unwrap().display().to_string())
        .collect();
    assert_eq!(
        files, case.files,
        "{name}: sample order differs from ImageFolder"
    );
    assert_eq!(Vec::<i64>::try_from(&split.y).unwrap(), case.labels);
    let ours = all_bytes(split);
    assert_eq!(ours.size(), case.shape, "{name}: shape");
    let (max, mean) = diff(&ours, &reference(name));
    println!("{name}: max |robustd - torchvision| = {max}/255, mean {mean:.4}/255");
    (max, mean)
}

#[test]
fn png_without_resizing_is_bit_exact_with_torchvision() {
    let (max, _) = parity(
        "fmnist_png_gray",
        |c| c.model.preprocess.resize = ResizeMode::None,
        [1, 28, 28],
    );
    assert_eq!(max, 0);
}

/// JPEG: robustd decodes with zune-jpeg, Pillow with libjpeg-turbo; their IDCTs and rounding may differ by a step
/// or two on a pixel.
#[test]
fn jpeg_matches_torchvision_within_decoder_rounding() {
    let (max, mean) = parity(
        "fmnist_jpeg_gray",
        |c| c.model.preprocess.resize = ResizeMode::None,
        [1, 28, 28],
    );
    assert!(
        max <= JPEG_TOLERANCE && mean < 0.05,
        "max {max}, mean {mean}"
    );
}

/// Largest per-pixel difference (in 1/255 steps) accepted for a JPEG file (zune-jpeg's IDCT and rounding against
/// libjpeg-turbo's; measured 1, mean 0.011, on gray Fashion-MNIST JPEGs).
const JPEG_TOLERANCE: i64 = 2;
/// For a resize of a PNG: fast_image_resize's fixed-point coefficients (15-bit, Pillow-SIMD's scheme) against
/// Pillow's (22-bit) round some outputs the other way (measured 1, mean 0.11, upsampling 28 → 224).
const RESIZE_TOLERANCE: i64 = 1;
/// Colour JPEGs of odd sizes, EXIF-rotated, then resized: both differences add up, plus the chroma upsampling of
/// the two JPEG decoders (measured at most 4, mean at most 0.33 over the cases below).
const JPEG_AND_RESIZE_TOLERANCE: i64 = 4;
const JPEG_AND_RESIZE_MEAN: f64 = 0.4;

#[test]
fn upsampling_png_matches_torchvision_resize_and_crop() {
    let (max, mean) = parity("fmnist_png_rgb224", |_| {}, [3, 224, 224]);
    assert!(
        max <= RESIZE_TOLERANCE && mean < 0.15,
        "max {max}, mean {mean}"
    );
}

#[test]
fn odd_images_match_torchvision_resize_256_center_crop_224() {
    let (max, mean) = parity(
        "odd_shorter256_crop224",
        |c| c.model.preprocess.resize_size = Some(256),
        [3, 224, 224],
    );
    assert!(
        max <= JPEG_AND_RESIZE_TOLERANCE && mean < JPEG_AND_RESIZE_MEAN,
        "max {max}, mean {mean}"
    );
}

#[test]
fn odd_images_match_torchvision_with_a_non_square_crop_on_the_val_split() {
    let (max, mean) = parity(
        "odd_shorter_crop64x48",
        |c| {
            c.model.preprocess.resize_size = Some(64);
            c.model.preprocess.size = Some([64, 48]);
        },
        [3, 1, 1],
    );
    assert!(
        max <= JPEG_AND_RESIZE_TOLERANCE && mean < JPEG_AND_RESIZE_MEAN,
        "max {max}, mean {mean}"
    );
}

#[test]
fn odd_images_match_torchvision_exact_resize() {
    let (max, mean) = parity(
        "odd_exact40x56",
        |c| c.model.preprocess.resize = ResizeMode::Exact,
        [3, 40, 56],
    );
    assert!(
        max <= JPEG_AND_RESIZE_TOLERANCE && mean < JPEG_AND_RESIZE_MEAN,
        "max {max}, mean {mean}"
    );
}

#[test]
fn odd_images_match_torchvision_grayscale() {
    let (max, mean) = parity("odd_gray_shorter32", |_| {}, [1, 32, 32]);
    assert!(
        max <= JPEG_AND_RESIZE_TOLERANCE && mean < JPEG_AND_RESIZE_MEAN,
        "max {max}, mean {mean}"
    );
}

#[test]
fn odd_images_match_torchvision_bicubic() {
    let (max, mean) = parity(
        "odd_bicubic_shorter96",
        |c| c.model.preprocess.interpolation = Interpolation::Bicubic,
        [3, 96, 96],
    );
    assert!(
        max <= JPEG_AND_RESIZE_TOLERANCE && mean < JPEG_AND_RESIZE_MEAN,
        "max {max}, mean {mean}"
    );
}

#[test]
fn a_manifest_lists_the_same_samples_as_the_folder() {
    let dir = images_dir().join("fmnist");
    let mut folder = config("folder", &dir);
    folder.model.preprocess.resize = ResizeMode::None;
    let mut manifest = folder.clone();
    manifest.dataset.name = "manifest".into();
    let a = open(&folder, [1, 28, 28]).unwrap();
    let b = open(&manifest, [1, 28, 28]).unwrap();
    assert_eq!(b.class_names.len(), 10);
    // The manifest lists files sorted by path, which is the folder's order here.
    for (x, y) in [(&a.train, &b.train), (&a.test, &b.test)] {
        assert_eq!(x.len(), y.len());
        assert_eq!(
            Vec::<i64>::try_from(&x.y).unwrap(),
            Vec::<i64>::try_from(&y.y).unwrap()
        );
        assert_eq!(diff(&all_bytes(x), &all_bytes(y)).0, 0);
    }
    assert_ne!(
        a.files.as_ref().unwrap().fingerprint,
        b.files.as_ref().unwrap().fingerprint,
        "the fingerprint names the format"
    );
}

#[test]
fn the_fingerprint_changes_with_a_label_and_not_with_the_location() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy");
    copy_dir(&images_dir().join("fmnist"), &copy);
    let mut cfg = config("folder", &images_dir().join("fmnist"));
    cfg.model.preprocess.resize = ResizeMode::None;
    let original = open(&cfg, [1, 28, 28]).unwrap();
    cfg.dataset.path = Some(copy.clone());
    let moved = open(&cfg, [1, 28, 28]).unwrap();
    let print = |d: &Dataset| d.files.as_ref().unwrap().fingerprint.clone();
    assert_eq!(print(&original), print(&moved));
    // Relabel one file: move it to another class folder.
    let from = copy
        .join("train/0_T-shirt")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::rename(
        &from,
        copy.join("train/1_Trouser").join(from.file_name().unwrap()),
    )
    .unwrap();
    let relabelled = open(&cfg, [1, 28, 28]).unwrap();
    assert_ne!(print(&original), print(&relabelled));
}

#[test]
fn training_batches_are_the_same_for_one_or_three_decode_threads() {
    let mut cfg = config("folder", &images_dir().join("odd"));
    cfg.dataset.corrupt = CorruptPolicy::Fail;
    let batches = |threads: usize| -> Vec<(Tensor, Tensor)> {
        let mut cfg = cfg.clone();
        cfg.dataset.loader_threads = threads;
        let ds = open(&cfg, [3, 48, 40]).unwrap();
        let options = BatchOptions::train(5, Augmentation::RandomResizedCrop, 7, 2);
        ds.train
            .batches(&options)
            .unwrap()
            .map(|b| {
                let b = b.unwrap();
                (b.x, b.positions)
            })
            .collect()
    };
    let one = batches(1);
    let three = batches(3);
    assert_eq!(one.len(), 3, "12 samples in batches of 5");
    for ((x1, p1), (x3, p3)) in one.iter().zip(&three) {
        assert_eq!(p1, p3);
        assert_eq!(x1.size(), [p1.size()[0], 3, 48, 40]);
        assert_eq!(diff(&(x1 * 255.0).round(), &(x3 * 255.0).round()).0, 0);
    }
    // Another epoch draws other crops.
    let ds = open(&cfg, [3, 48, 40]).unwrap();
    let other: Vec<Tensor> = ds
        .train
        .batches(&BatchOptions::train(
            5,
            Augmentation::RandomResizedCrop,
            7,
            3,
        ))
        .unwrap()
        .map(|b| b.unwrap().x)
        .collect();
    assert!(other
        .iter()
        .zip(&one)
        .any(|(a, (b, _))| a.size() != b.size() || a != b));
}

#[test]
fn evaluation_batches_equal_the_images_by_position() {
    let mut cfg = config("folder", &images_dir().join("odd"));
    cfg.dataset.loader_threads = 2;
    let ds = open(&cfg, [3, 32, 32]).unwrap();
    let whole = ds.train.images(&(0..12).collect::<Vec<_>>()).unwrap();
    let mut seen = 0;
    for batch in ds.train.batches(&BatchOptions::eval(5)).unwrap() {
        let batch = batch.unwrap();
        let again = whole.index_select(0, &batch.positions);
        assert_eq!(
            diff(&(batch.x * 255.0).round(), &(again * 255.0).round()).0,
            0
        );
        seen += batch.positions.size()[0];
    }
    assert_eq!(seen, 12);
}

#[test]
fn the_decode_cache_gives_the_same_tensors_and_fills_once_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config("folder", &images_dir().join("odd"));
    let plain = all_bytes(&open(&cfg, [3, 64, 64]).unwrap().train);
    cfg.dataset.cache = Some(tmp.path().join("cache"));
    let cached = open(&cfg, [3, 64, 64]).unwrap();
    let first = all_bytes(&cached.train);
    let entries = count_files(&tmp.path().join("cache"));
    assert_eq!(entries, 12);
    let second = all_bytes(&cached.train);
    assert_eq!(diff(&plain, &first).0, 0);
    assert_eq!(diff(&plain, &second).0, 0);
    assert_eq!(count_files(&tmp.path().join("cache")), entries);
}

#[test]
fn normalization_presets_read_as_their_values() {
    let cfg = Config::from_yaml(
        "model: {mean: imagenet, std: imagenet}\n",
        Path::new("preset.yaml"),
    )
    .unwrap();
    assert_eq!(cfg.model.mean, Some(vec![0.485, 0.456, 0.406]));
    assert_eq!(cfg.model.std, Some(vec![0.229, 0.224, 0.225]));
    let cifar = Config::from_yaml("model: {mean: cifar10}\n", Path::new("p.yaml")).unwrap();
    assert_eq!(cifar.model.mean.unwrap().len(), 3);
    let err = Config::from_yaml("model: {mean: nonsense}\n", Path::new("p.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown normalization preset `nonsense`"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Refusals, each naming the file or folder

/// A small folder dataset in a temp dir: 2 classes × 2 PNGs per split, copied from the fixtures.
fn small_folder(dir: &Path) {
    let src = images_dir().join("fmnist");
    for split in ["train", "test"] {
        for (class, from) in [("cat", "train/0_T-shirt"), ("dog", "train/1_Trouser")] {
            let to = dir.join(split).join(class);
            std::fs::create_dir_all(&to).unwrap();
            for (k, entry) in std::fs::read_dir(src.join(from))
                .unwrap()
                .take(2)
                .enumerate()
            {
                std::fs::copy(entry.unwrap().path(), to.join(format!("{k}.png"))).unwrap();
            }
        }
    }
}

fn open_small(dir: &Path, edit: impl Fn(&mut Config)) -> Result<Dataset, DataError> {
    let mut cfg = config("folder", dir);
    cfg.model.preprocess.resize = ResizeMode::None;
    edit(&mut cfg);
    open(&cfg, [1, 28, 28])
}

fn error_text(result: Result<Dataset, DataError>) -> String {
    match result {
        Ok(_) => panic!("opened a dataset that should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_empty_class_folder_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    small_folder(tmp.path());
    let empty = tmp.path().join("train/emu");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "not an image").unwrap();
    let e = error_text(open_small(tmp.path(), |_| {}));
    assert!(
        e.contains("train/emu") && e.contains("empty class folder"),
        "{e}"
    );
}

#[test]
fn a_class_missing_from_the_test_split_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    small_folder(tmp.path());
    std::fs::remove_dir_all(tmp.path().join("test/dog")).unwrap();
    let e = error_text(open_small(tmp.path(), |_| {}));
    assert!(
        e.contains("test") && e.contains("no images of class dog"),
        "{e}"
    );
}

#[test]
fn explicit_classes_set_the_labels_and_refuse_unknown_folders() {
    let tmp = tempfile::tempdir().unwrap();
    small_folder(tmp.path());
    let ds = open_small(tmp.path(), |c| {
        c.dataset.classes = Some(vec!["dog".into(), "cat".into()])
    })
    .unwrap();
    assert_eq!(ds.class_names, ["dog", "cat"]);
    // torchvision's order: classes by name (cat first), labelled by the list.
    assert_eq!(Vec::<i64>::try_from(&ds.train.y).unwrap(), [1, 1, 0, 0]);
    let e = error_text(open_small(tmp.path(), |c| {
        c.dataset.classes = Some(vec!["cat".into()])
    }));
    assert!(
        e.contains("train/dog") && e.contains("not in dataset.classes"),
        "{e}"
    );
}

#[test]
fn a_corrupt_image_fails_naming_it_or_is_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    small_folder(tmp.path());
    let bad = tmp.path().join("test/cat/0.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        tmp.path().join("test/dog/garbage.jpg"),
        b"this is not a jpeg",
    )
    .unwrap();
    // fail (the default): the evaluated images name the file when they are read.
    let ds = open_small(tmp.path(), |_| {}).unwrap();
    let e = ds.test.eval_pixels().unwrap_err().to_string();
    assert!(
        e.contains("test/cat/0.png") || e.contains("garbage.jpg"),
        "{e}"
    );
    assert!(e.contains("corrupt"), "{e}");
    // skip: left out of the evaluation from the start, and counted.
    let ds = open_small(tmp.path(), |c| c.dataset.corrupt = CorruptPolicy::Skip).unwrap();
    assert_eq!(ds.test.len(), 3, "5 test files, 2 corrupt");
    assert_eq!(ds.test.eval_pixels().unwrap().size(), [3, 1, 28, 28]);
    let skipped = ds.files.as_ref().unwrap().skipped();
    assert_eq!(skipped.count, 2);
    assert!(
        skipped
            .files
            .iter()
            .any(|f| f.starts_with("test/dog/garbage.jpg")),
        "{skipped:?}"
    );
    // A corrupt training file is dropped from its batch under skip, and stops the pass under fail.
    std::fs::write(
        tmp.path().join("train/cat/1.png"),
        b"\x89PNG\r\n\x1a\n broken",
    )
    .unwrap();
    let ds = open_small(tmp.path(), |c| c.dataset.corrupt = CorruptPolicy::Skip).unwrap();
    let kept: i64 = ds
        .train
        .batches(&BatchOptions::eval(3))
        .unwrap()
        .map(|b| b.unwrap().positions.size()[0])
        .sum();
    assert_eq!(kept, 3);
    let ds = open_small(tmp.path(), |_| {}).unwrap();
    let e = ds
        .train
        .batches(&BatchOptions::eval(3))
        .unwrap()
        .find_map(|b| b.err())
        .expect("a corrupt file stops the pass")
        .to_string();
    assert!(e.contains("train/cat/1.png"), "{e}");
}

#[test]
fn a_format_robustd_does_not_decode_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    small_folder(tmp.path());
    std::fs::write(tmp.path().join("train/cat/scan.tiff"), b"II*\0").unwrap();
    let e = error_text(open_small(tmp.path(), |_| {}));
    assert!(e.contains("scan.tiff") && e.contains("not decoded"), "{e}");
}

#[test]
fn symlinks_leaving_the_root_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    small_folder(&root);
    let outside = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(root.join("train/cat/0.png"), outside.join("x.png")).unwrap();
    // A file link out of the root.
    std::os::unix::fs::symlink(outside.join("x.png"), root.join("train/cat/link.png")).unwrap();
    let e = error_text(open_small(&root, |_| {}));
    assert!(
        e.contains("link.png") && e.contains("outside the dataset root"),
        "{e}"
    );
    std::fs::remove_file(root.join("train/cat/link.png")).unwrap();
    // A class folder linked out of the root.
    std::os::unix::fs::symlink(&outside, root.join("train/ghost")).unwrap();
    let e = error_text(open_small(&root, |_| {}));
    assert!(
        e.contains("ghost") && e.contains("outside the dataset root"),
        "{e}"
    );
    std::fs::remove_file(root.join("train/ghost")).unwrap();
    // A link that stays inside is followed.
    std::os::unix::fs::symlink(
        root.join("train/cat/0.png"),
        root.join("train/cat/again.png"),
    )
    .unwrap();
    assert_eq!(open_small(&root, |_| {}).unwrap().train.len(), 5);
}

#[test]
fn manifest_errors_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    small_folder(&root);
    std::fs::write(
        root.join("test.csv"),
        "test/cat/0.png,0\ntest/dog/0.png,1\n",
    )
    .unwrap();
    let manifest = |train: &str| -> String {
        std::fs::write(root.join("train.csv"), train).unwrap();
        let mut cfg = config("manifest", &root);
        cfg.model.preprocess.resize = ResizeMode::None;
        cfg.dataset.classes = Some(vec!["cat".into(), "dog".into()]);
        error_text(open(&cfg, [1, 28, 28]))
    };
    let e = manifest("path,label\ntrain/cat/0.png,0\ntrain/dog/0.png,7\n");
    assert!(
        e.contains("train.csv:3") && e.contains("label 7 is outside 0..2"),
        "{e}"
    );
    let e = manifest("train/cat/0.png,0\n../../etc/passwd,1\n");
    assert!(
        e.contains("train.csv:2") && e.contains("climbs above the root"),
        "{e}"
    );
    let e = manifest("train/cat/0.png,0\n/etc/hostname,1\n");
    assert!(e.contains("train.csv:2") && e.contains("absolute"), "{e}");
    let e = manifest("train/cat/0.png,0\ntrain/dog/0.png,wolf\n");
    assert!(
        e.contains("train.csv:2") && e.contains("`wolf` is not in dataset.classes"),
        "{e}"
    );
    let e = manifest("train/cat/0.png,0\ntrain/dog/nope.png,1\n");
    assert!(e.contains("train.csv:2") && e.contains("nope.png"), "{e}");
    // Class names work as labels when dataset.classes is set, and the JSON-lines form reads the same.
    std::fs::write(
        root.join("train.csv"),
        "train/cat/0.png,cat\ntrain/dog/0.png,dog\n",
    )
    .unwrap();
    std::fs::remove_file(root.join("test.csv")).unwrap();
    std::fs::write(
        root.join("val.jsonl"),
        "{\"path\": \"test/cat/0.png\", \"label\": 0}\n\n{\"path\": \"test/dog/0.png\", \"label\": \"dog\"}\n",
    )
    .unwrap();
    let mut cfg = config("manifest", &root);
    cfg.model.preprocess.resize = ResizeMode::None;
    cfg.dataset.classes = Some(vec!["cat".into(), "dog".into()]);
    let ds = open(&cfg, [1, 28, 28]).unwrap();
    assert_eq!(Vec::<i64>::try_from(&ds.test.y).unwrap(), [0, 1]);
    assert_eq!(ds.files.as_ref().unwrap().test_source, "val.jsonl");
}

#[test]
fn a_model_taking_other_than_one_or_three_channels_is_refused() {
    let cfg = config("folder", &images_dir().join("odd"));
    let e = error_text(open(&cfg, [4, 32, 32]));
    assert!(e.contains("4 channels"), "{e}");
    let e = error_text(Dataset::open(&cfg, None));
    assert!(e.contains("model.preprocess.size"), "{e}");
}

#[test]
fn the_allow_list_takes_only_paths_inside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("datasets");
    let data = allowed.join("mine");
    std::fs::create_dir_all(&data).unwrap();
    let outside = tmp.path().join("other");
    std::fs::create_dir_all(&outside).unwrap();
    robustd::data::check_allowed(&data, std::slice::from_ref(&allowed)).unwrap();
    let e = robustd::data::check_allowed(&outside, std::slice::from_ref(&allowed)).unwrap_err();
    assert!(
        e.to_string()
            .contains("not inside an allowed dataset directory"),
        "{e}"
    );
    // A symlink inside the allowed directory that points out of it is judged by its target.
    std::os::unix::fs::symlink(&outside, allowed.join("sneaky")).unwrap();
    assert!(
        robustd::data::check_allowed(&allowed.join("sneaky"), std::slice::from_ref(&allowed))
            .is_err()
    );
    assert!(robustd::data::check_allowed(&data, &[]).is_err());
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}
