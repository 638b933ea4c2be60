//! Normalization presets for `model.mean`/`model.std`: the per-channel statistics a model family was trained
//! with, by name. The built-in dataset profiles contribute their own (`cifar10`, `fashion-mnist`, ...).

use super::profile::{known_names, Profile};

/// `(name, mean, std)` of the presets that are not dataset profiles.
const MODEL_FAMILIES: &[(&str, [f32; 3], [f32; 3])] = &[
    // torchvision's ImageNet models and most timm CNNs.
    ("imagenet", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    // Inception/ViT-style [-1, 1] scaling.
    ("inception", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    // OpenAI CLIP image encoders.
    (
        "clip",
        [0.481_454_66, 0.457_827_5, 0.408_210_73],
        [0.268_629_54, 0.261_302_6, 0.275_777_1],
    ),
];

/// The mean and std a preset name stands for.
pub fn normalization_preset(name: &str) -> Option<(Vec<f32>, Vec<f32>)> {
    if let Some((_, mean, std)) = MODEL_FAMILIES.iter().find(|(n, _, _)| *n == name) {
        return Some((mean.to_vec(), std.to_vec()));
    }
    let profile = Profile::built_in(name).ok()?;
    Some((profile.mean, profile.std))
}

/// Every preset name.
pub fn normalization_presets() -> Vec<&'static str> {
    MODEL_FAMILIES
        .iter()
        .map(|(n, _, _)| *n)
        .chain(
            known_names()
                .into_iter()
                .filter(|n| Profile::built_in(n).is_ok()),
        )
        .collect()
}
