//! The batch iterator that evaluation and training share: file order or a seeded shuffle, optional augmentation,
//! optional dropping of a last partial batch. Everything random comes from `(seed, epoch)`, so a run is
//! reproducible batch by batch, and works on whatever device the split lives on.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::{stream, Augmentation, DataError, Split, Stream};

#[derive(Debug, Clone, PartialEq)]
pub struct BatchOptions {
    pub batch_size: usize,
    /// Visit the samples in a random order drawn from `(seed, epoch)` instead of split order.
    pub shuffle: bool,
    pub augmentation: Augmentation,
    /// Skip a last batch smaller than `batch_size` (e.g. for BatchNorm in train mode).
    pub drop_last: bool,
    pub seed: u64,
    /// Mixed into the shuffle and augmentation draws so each epoch sees a different order.
    pub epoch: u64,
}

impl BatchOptions {
    /// Evaluation: split order, no augmentation, every sample once.
    pub fn eval(batch_size: usize) -> Self {
        Self {
            batch_size,
            shuffle: false,
            augmentation: Augmentation::None,
            drop_last: false,
            seed: 0,
            epoch: 0,
        }
    }

    /// Training: shuffled and augmented from `(seed, epoch)`, every sample once.
    pub fn train(batch_size: usize, augmentation: Augmentation, seed: u64, epoch: u64) -> Self {
        Self {
            batch_size,
            shuffle: true,
            augmentation,
            drop_last: false,
            seed,
            epoch,
        }
    }
}

/// One batch: images `[B, C, H, W]` float32 in [0,1], labels int64 `[B]`, and each sample's position in the split
/// (int64 `[B]`, on the split's device; `split.indices[position]` is its source index). The tensors are copies,
/// not views of the split.
#[derive(Debug)]
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    pub positions: Tensor,
}

/// Iterator over the batches of one pass through a split.
pub struct Batches<'a> {
    split: &'a Split,
    /// Visiting order (positions); `None` = split order.
    order: Option<Vec<i64>>,
    batch_size: usize,
    next: usize,
    end: usize,
    augmentation: Augmentation,
    rng: ChaCha8Rng,
}

impl Split {
    /// One pass over this split in batches.
    pub fn batches(&self, options: &BatchOptions) -> Result<Batches<'_>, DataError> {
        if options.batch_size == 0 {
            return Err(DataError::Invalid {
                what: "batch size",
                detail: "must be at least 1".into(),
            });
        }
        let n = self.len();
        let order = options.shuffle.then(|| {
            let mut order: Vec<i64> = (0..n as i64).collect();
            order.shuffle(&mut stream(options.seed, Stream::Shuffle, options.epoch));
            order
        });
        let end = if options.drop_last {
            n - n % options.batch_size
        } else {
            n
        };
        Ok(Batches {
            split: self,
            order,
            batch_size: options.batch_size,
            next: 0,
            end,
            augmentation: options.augmentation,
            rng: stream(options.seed, Stream::Augment, options.epoch),
        })
    }
}

impl Batches<'_> {
    /// The batch at `[start, start + len)` of the visiting order; always fresh tensors, never views of the split,
    /// so callers may modify a batch in place.
    fn batch(&mut self, start: usize, len: usize) -> Result<Batch, DataError> {
        let device = self.split.x.device();
        let positions = match &self.order {
            None => {
                let (start, end) = (start as i64, (start + len) as i64);
                Tensor::f_arange_start(start, end, (Kind::Int64, device))?
            }
            Some(order) => Tensor::f_from_slice(&order[start..start + len])?.f_to_device(device)?,
        };
        let x = self.split.x.f_index_select(0, &positions)?;
        let y = self.split.y.f_index_select(0, &positions)?;
        let x = self.augmentation.apply(&x, &mut self.rng)?;
        Ok(Batch { x, y, positions })
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let start = self.next;
        let len = self.batch_size.min(self.end - start);
        self.next += len;
        Some(self.batch(start, len))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.end - self.next).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}
