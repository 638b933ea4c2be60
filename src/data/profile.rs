//! Built-in dataset profiles: where each named dataset lives, its file format, image shape, classes and class
//! names, normalization, and default augmentation. The source of truth is `configs/datasets/<name>.yaml`, embedded at
//! build time so the binary needs no file to run and the profiles stay readable and reviewable as data.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Augmentation, DataError};

/// On-disk format of a built-in dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// IDX files (MNIST family), gzipped or not.
    Idx,
    /// CIFAR-10 binary version: `data_batch_1..5.bin`, `test_batch.bin`.
    Cifar10,
    /// CIFAR-100 binary version: `train.bin`, `test.bin` (fine labels).
    Cifar100,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub format: Format,
    /// Directories searched in order when `dataset.path` is null; relative ones are taken from the working directory.
    pub locations: Vec<PathBuf>,
    /// The folder the official archive unpacks to, also looked for inside each location.
    pub archive_dir: Option<PathBuf>,
    /// How a user obtains the files (quoted in the not-found error).
    pub how_to_get: String,
    /// `[C, H, W]` of one image.
    pub shape: [i64; 3],
    pub classes: i64,
    pub class_names: Vec<String>,
    /// Per-channel mean and standard deviation of the training images in [0,1].
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// What `train.augmentation: auto` resolves to.
    pub augmentation: Augmentation,
}

/// `(name, YAML)` of every built-in profile.
const BUILT_IN: [(&str, &str); 4] = [
    (
        "fashion-mnist",
        include_str!("../../configs/datasets/fashion-mnist.yaml"),
    ),
    ("mnist", include_str!("../../configs/datasets/mnist.yaml")),
    (
        "cifar10",
        include_str!("../../configs/datasets/cifar10.yaml"),
    ),
    (
        "cifar100",
        include_str!("../../configs/datasets/cifar100.yaml"),
    ),
];

/// The dataset names `dataset.name` accepts: the built-in profiles, `npz`, and the image-file datasets.
pub fn known_names() -> Vec<&'static str> {
    BUILT_IN
        .iter()
        .map(|(name, _)| *name)
        .chain(["npz", "folder", "manifest"])
        .collect()
}

impl Profile {
    /// The built-in profile for `name` (`fashion-mnist`, `mnist`, `cifar10`, `cifar100`).
    pub fn built_in(name: &str) -> Result<Profile, DataError> {
        let Some((_, yaml)) = BUILT_IN.iter().find(|(n, _)| *n == name) else {
            return Err(DataError::UnknownDataset {
                name: name.to_string(),
                known: known_names().join(", "),
            });
        };
        let profile: Profile = serde_norway::from_str(yaml).map_err(|e| DataError::Profile {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        profile.validate()?;
        Ok(profile)
    }

    fn validate(&self) -> Result<(), DataError> {
        let fail = |message: String| {
            Err(DataError::Profile {
                name: self.name.clone(),
                message,
            })
        };
        let channels = self.shape[0] as usize;
        if self.class_names.len() as i64 != self.classes {
            return fail(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.classes
            ));
        }
        if self.mean.len() != channels || self.std.len() != channels {
            return fail(format!("mean/std must have {channels} entries"));
        }
        if self.std.iter().any(|s| *s <= 0.0) {
            return fail("std must be positive".into());
        }
        Ok(())
    }

    /// The directory to load from: the first of `explicit` (if given, else the profile's locations), each also
    /// with the archive folder appended, for which `holds_files` is true. `wanted` names the files in the error.
    pub(crate) fn resolve_dir(
        &self,
        explicit: Option<&Path>,
        holds_files: impl Fn(&Path) -> bool,
        wanted: &str,
    ) -> Result<PathBuf, DataError> {
        let bases: Vec<PathBuf> = match explicit {
            Some(dir) => vec![dir.to_path_buf()],
            None => self.locations.clone(),
        };
        let mut looked = Vec::new();
        for base in bases {
            let mut candidates = vec![base.clone()];
            if let Some(archive_dir) = &self.archive_dir {
                candidates.push(base.join(archive_dir));
            }
            for dir in candidates {
                if holds_files(&dir) {
                    return Ok(dir);
                }
                looked.push(dir.display().to_string());
            }
        }
        Err(DataError::NotFound {
            name: self.name.clone(),
            missing: wanted.to_string(),
            looked: looked.join(", "),
            how_to_get: self.how_to_get.clone(),
        })
    }
}
