//! Seeded randomness for attacks, drawn per sample so results do not depend on batch size or batch order.
//!
//! Every row of a batch carries a key (its position in the evaluation set, or just its row number); the random
//! numbers for that row come from a ChaCha8 stream seeded by `(seed, key)` and a purpose-specific stream id. The
//! same seed and keys give bit-identical draws on every machine, independent of libtorch's global generator (which
//! concurrent jobs would share).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::AttackError;

/// Stream ids separating the purposes random numbers are drawn for; restarts add their index.
pub(crate) mod stream {
    /// Random starts of PGD/APGD restart `r` use `START + r`.
    pub const START: u64 = 0x1000;
    /// Square attack: initial stripes/patterns, square positions and signs.
    pub const SQUARE: u64 = 0x2000;
    /// Square attack with windows shared per iteration: the iteration's position (and L∞ signs), keyed by iteration.
    pub const SQUARE_SHARED: u64 = 0x2001;
}

/// The generator for one row: deterministic in `(seed, key, stream)`.
pub fn row_rng(seed: u64, key: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(seed ^ splitmix64(key)));
    rng.set_stream(stream);
    rng
}

/// `keys` if given (checked against the batch size), else `0..n`.
pub fn row_keys(rows: Option<&[u64]>, n: usize) -> Result<Vec<u64>, AttackError> {
    match rows {
        Some(k) if k.len() == n => Ok(k.to_vec()),
        Some(k) => Err(AttackError::Invalid {
            what: "row keys",
            message: format!("{} keys for a batch of {n}", k.len()),
        }),
        None => Ok((0..n as u64).collect()),
    }
}

/// Random tensor shaped like `like` (float32, on its device): row `i` filled by `draw` from row `keys[i]`'s
/// generator.
pub fn per_row_tensor(
    like: &Tensor,
    keys: &[u64],
    seed: u64,
    stream: u64,
    mut draw: impl FnMut(&mut ChaCha8Rng) -> f32,
) -> Result<Tensor, AttackError> {
    let shape = like.size();
    let n = shape.first().copied().unwrap_or(0) as usize;
    if n != keys.len() {
        return Err(AttackError::Invalid {
            what: "row keys",
            message: format!("{} keys for a batch of {n}", keys.len()),
        });
    }
    let per_row: usize = shape.iter().skip(1).product::<i64>() as usize;
    let mut data = Vec::with_capacity(n * per_row);
    for &key in keys {
        let mut rng = row_rng(seed, key, stream);
        data.extend((0..per_row).map(|_| draw(&mut rng)));
    }
    Ok(Tensor::f_from_slice(&data)?
        .f_view(shape.as_slice())?
        .f_to_device(like.device())?)
}

/// Uniform in [-1, 1).
pub fn uniform_pm1(rng: &mut ChaCha8Rng) -> f32 {
    rng.random::<f32>() * 2.0 - 1.0
}

/// Standard normal (Box–Muller; one of the pair is used so every draw consumes the same amount of stream).
pub fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// −1 or +1 with equal probability.
pub fn random_sign(rng: &mut ChaCha8Rng) -> f32 {
    if rng.random::<bool>() {
        1.0
    } else {
        -1.0
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for one named consumer (an attack), derived from the master seed so consumers do not share streams.
pub fn derive_seed(master: u64, name: &str) -> u64 {
    let name_hash = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    });
    splitmix64(master ^ name_hash)
}
