//! Wall time to load the full Fashion-MNIST (Debian package, gzipped IDX) into float tensors, and one pass over
//! its training split in shuffled batches of 128 without and with crop-flip. Run: `cargo bench --bench data_load`.

use std::time::Instant;

use robustd::config::DatasetSpec;
use robustd::data::{Augmentation, BatchOptions, Dataset};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = DatasetSpec::first("fashion-mnist", 0, 0);
    println!("libtorch threads: {}", tch::get_num_threads());
    let mut dataset = None;
    for run in 1..=3 {
        let started = Instant::now();
        let loaded = Dataset::load(&spec, 0)?;
        println!(
            "load {run}: {:.3} s ({} train + {} test images)",
            started.elapsed().as_secs_f64(),
            loaded.train.len(),
            loaded.test.len()
        );
        dataset = Some(loaded);
    }
    let Some(dataset) = dataset else {
        return Ok(());
    };
    for augmentation in [Augmentation::None, Augmentation::CropFlip] {
        let started = Instant::now();
        let mut samples = 0;
        for batch in dataset
            .train
            .batches(&BatchOptions::train(128, augmentation, 0, 0))?
        {
            samples += batch?.x.size()[0];
        }
        println!(
            "one shuffled pass, batch 128, augmentation {}: {:.3} s for {samples} samples",
            augmentation.name(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
