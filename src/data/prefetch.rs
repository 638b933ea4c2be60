//! The bounded prefetching loader behind [`super::Split::batches`] for image-file splits: one producer thread
//! walks the pass's batches in order and has each decoded on the source's decode threads, handing finished
//! batches through a channel that holds at most `prefetch` of them. Memory is bounded by
//! `(prefetch + 2) x batch x C x H x W` bytes (queued, being decoded, being consumed) plus one decoded image per
//! decode thread, whatever the split's size. The batches arrive in visiting order, so results do not depend on
//! thread timing. Dropping the iterator stops the producer after the batch it is decoding.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use tch::{Kind, Tensor};

use super::image_source::{Decoded, ImageSource, Transform};
use super::DataError;

/// One batch as the producer sends it: the decoded bytes, and the split positions of the kept samples.
type Produced = Result<(Decoded, Vec<i64>), DataError>;

pub(crate) struct Prefetcher {
    receiver: Option<Receiver<Produced>>,
    producer: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts decoding `batches` (each: the samples' source indices and their split positions) in order.
    pub fn start(
        source: Arc<ImageSource>,
        batches: Vec<(Vec<i64>, Vec<i64>)>,
        transform: Transform,
    ) -> Prefetcher {
        let (sender, receiver) = sync_channel::<Produced>(source.prefetch);
        let producer = std::thread::Builder::new()
            .name("robustd-prefetch".into())
            .spawn(move || {
                for (indices, positions) in batches {
                    let produced = source.decode(&indices, transform).map(|decoded| {
                        let kept = decoded.kept.iter().map(|&k| positions[k]).collect();
                        (decoded, kept)
                    });
                    let failed = produced.is_err();
                    if sender.send(produced).is_err() || failed {
                        return; // the consumer is gone, or was told why the pass stops
                    }
                }
            });
        match producer {
            Ok(handle) => Prefetcher {
                receiver: Some(receiver),
                producer: Some(handle),
            },
            Err(e) => {
                // No thread: the first `next_batch` reports why.
                let (sender, receiver) = sync_channel(1);
                let _ = sender.send(Err(DataError::Invalid {
                    what: "prefetch thread",
                    detail: e.to_string(),
                }));
                Prefetcher {
                    receiver: Some(receiver),
                    producer: None,
                }
            }
        }
    }

    /// The next batch as float32 `[B, C, H, W]` in [0,1] on the CPU, and its split positions.
    pub fn next_batch(&mut self, chw: [i64; 3]) -> Result<(Tensor, Vec<i64>), DataError> {
        let received = self
            .receiver
            .as_ref()
            .and_then(|r| r.recv().ok())
            .ok_or_else(|| DataError::Invalid {
                what: "prefetch thread",
                detail: "it stopped before the pass ended".into(),
            })?;
        let (decoded, positions) = received?;
        let n = positions.len() as i64;
        let x = Tensor::f_from_slice(&decoded.data)?
            .f_view([n, chw[0], chw[1], chw[2]])?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?;
        Ok((x, positions))
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the channel first makes a producer blocked on a full queue stop.
        self.receiver.take();
        if let Some(handle) = self.producer.take() {
            let _ = handle.join();
        }
    }
}
