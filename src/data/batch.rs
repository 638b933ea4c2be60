//! The batch iterator that evaluation and training share: file order or a seeded shuffle, optional augmentation,
//! optional dropping of a last partial batch. Everything random comes from `(seed, epoch)`, so a run is
//! reproducible batch by batch, and works on whatever device the split lives on.
//!
//! In-RAM splits are sliced; image-file splits are decoded ahead by a [`Prefetcher`] (the same visiting order,
//! the same batches), so training, evaluation and memorization consume both the same way.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::image_source::Transform;
use super::prefetch::Prefetcher;
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
    /// An image-file split's decoder thread, delivering the batches in order.
    prefetch: Option<Prefetcher>,
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
        let prefetch = match &self.source {
            None => {
                if options.augmentation == Augmentation::RandomResizedCrop {
                    return Err(DataError::NeedsImageFiles {
                        what: "train.augmentation random-resized-crop".into(),
                    });
                }
                None
            }
            Some(source) => {
                let transform = match options.augmentation {
                    Augmentation::RandomResizedCrop => Transform::RandomResizedCrop {
                        seed: options.seed,
                        epoch: options.epoch,
                    },
                    _ => Transform::Eval,
                };
                let visit = |p: usize| -> i64 {
                    let position = order.as_ref().map_or(p as i64, |o| o[p]);
                    self.indices[position as usize]
                };
                let batches: Vec<(Vec<i64>, Vec<i64>)> = (0..end)
                    .step_by(options.batch_size)
                    .map(|start| {
                        let range = start..(start + options.batch_size).min(end);
                        let positions: Vec<i64> = range
                            .clone()
                            .map(|p| order.as_ref().map_or(p as i64, |o| o[p]))
                            .collect();
                        (range.map(visit).collect(), positions)
                    })
                    .collect();
                Some(Prefetcher::start(source.clone(), batches, transform))
            }
        };
        Ok(Batches {
            split: self,
            order,
            batch_size: options.batch_size,
            next: 0,
            end,
            augmentation: options.augmentation,
            rng: stream(options.seed, Stream::Augment, options.epoch),
            prefetch,
        })
    }
}

impl Batches<'_> {
    /// The batch at `[start, start + len)` of the visiting order; always fresh tensors, never views of the split,
    /// so callers may modify a batch in place.
    fn batch(&mut self, start: usize, len: usize) -> Result<Batch, DataError> {
        let device = self.split.x.device();
        if let Some(prefetch) = &mut self.prefetch {
            let (x, positions) = prefetch.next_batch(self.split.chw())?;
            let positions = Tensor::f_from_slice(&positions)?.f_to_device(device)?;
            let x = self
                .augmentation
                .apply(&x.f_to_device(device)?, &mut self.rng)?;
            let y = self.split.y.f_index_select(0, &positions)?;
            return Ok(Batch { x, y, positions });
        }
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
        loop {
            if self.next >= self.end {
                return None;
            }
            let start = self.next;
            let len = self.batch_size.min(self.end - start);
            self.next += len;
            match self.batch(start, len) {
                // Every file of this batch was skipped as corrupt: go on with the next one.
                Ok(batch) if batch.y.size()[0] == 0 => continue,
                other => return Some(other),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.end - self.next).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}
