//! The estimator's arithmetic on hand-built cases: exact in/out counts and scores (undefined ones included), the
//! balanced design's guarantees, test consistency, rank deciles with ties, the histogram, and thresholding into
//! BAT flags aligned by source index, and the rank correlation that compares two score lists.

use robustd::data::Split;
use robustd::memo::scores::spearman;
use robustd::memo::{
    Answers, Consistency, MemoError, ScoreSource, SubsetDesign, Tally, TrainScores,
};
use tch::Tensor;

#[test]
fn counts_and_scores_of_a_hand_built_case() {
    // 3 models × 5 samples. Sample 3 is in every subset (never left out), sample 4 in none.
    let membership: [&[bool]; 3] = [
        &[true, true, false, true, false],
        &[true, false, true, true, false],
        &[false, false, true, true, false],
    ];
    let correct: [&[bool]; 3] = [
        &[true, true, true, true, false],
        &[true, false, false, true, true],
        &[false, false, true, false, true],
    ];
    let p: [&[f32]; 3] = [
        &[0.9, 0.8, 0.6, 0.7, 0.2],
        &[0.7, 0.1, 0.3, 0.9, 0.6],
        &[0.2, 0.3, 0.8, 0.4, 0.5],
    ];
    let answers: Vec<Answers> = correct
        .iter()
        .zip(&p)
        .map(|(c, p)| Answers { correct: c, p })
        .collect();
    let t = Tally::from_rows(&membership, &answers).unwrap();
    assert_eq!(t.in_seen, vec![2, 1, 2, 3, 0]);
    assert_eq!(t.in_correct, vec![2, 1, 1, 2, 0]);
    assert_eq!(t.out_seen, vec![1, 2, 1, 0, 3]);
    assert_eq!(t.out_correct, vec![0, 0, 1, 0, 2]);
    // mem = in_correct/in_seen - out_correct/out_seen
    assert_eq!(t.mem(0), Some(1.0));
    assert_eq!(t.mem(1), Some(1.0));
    assert_eq!(t.mem(2), Some(0.5 - 1.0));
    assert_eq!(t.mem(3), None, "never left out: undefined");
    assert_eq!(t.mem(4), None, "never seen: undefined");
    assert_eq!(t.in_accuracy(4), None);
    assert_eq!(t.out_accuracy(4), Some(2.0 / 3.0));
    assert_eq!(t.undefined(), 2);
    // The soft score: mean p among the models that saw the sample minus among those that did not.
    let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-6;
    assert!(close(t.mem_soft(0), (0.9 + 0.7) / 2.0 - 0.2));
    assert!(close(t.mem_soft(2), (0.3 + 0.8) / 2.0 - 0.6));
    assert_eq!(t.mem_soft(3), None);
    // Its standard error needs two models on each side; sample 1 has one in, two out.
    assert_eq!(t.standard_error(0), None);
    assert_eq!(t.standard_error(1), None);
    let two_and_two = Tally::from_rows(
        &[&[true], &[true], &[false], &[false]],
        &[
            Answers {
                correct: &[true],
                p: &[0.9],
            },
            Answers {
                correct: &[true],
                p: &[0.7],
            },
            Answers {
                correct: &[false],
                p: &[0.1],
            },
            Answers {
                correct: &[false],
                p: &[0.3],
            },
        ],
    )
    .unwrap();
    // s² = 0.02 on each side: sqrt(0.02/2 + 0.02/2) = 0.1414…
    assert!((two_and_two.standard_error(0).unwrap() - 0.02f64.sqrt()).abs() < 1e-6);

    // The same through a design given explicitly.
    let design =
        SubsetDesign::from_members(membership.iter().map(|r| r.to_vec()).collect()).unwrap();
    let mut again = Tally::new(5);
    for (k, row) in answers.iter().enumerate() {
        again.add_model(design.membership(k), *row).unwrap();
    }
    assert_eq!(design.models(), 3);
    assert_eq!(again, t);
    assert_eq!(design.positions(2), vec![2, 3]);

    // Rows of the wrong length are refused.
    assert!(matches!(
        Tally::new(5).add_model(
            &[true; 4],
            Answers {
                correct: &[true; 4],
                p: &[1.0; 4]
            }
        ),
        Err(MemoError::Invalid { key: "tally", .. })
    ));

    // Consistency: the models' mean p(y|x) on each test sample, and the share right.
    let mut c = Consistency::new(3);
    for (correct, p) in [
        ([true, false, true], [1.0, 0.5, 0.75]),
        ([true, false, false], [1.0, 0.0, 0.25]),
        ([true, true, false], [1.0, 0.5, 0.25]),
        ([true, false, false], [1.0, 0.0, 0.25]),
    ] {
        c.add_model(Answers {
            correct: &correct,
            p: &p,
        })
        .unwrap();
    }
    assert_eq!(c.scores(), vec![1.0, 0.25, 0.375]);
    assert_eq!(c.accuracy(), vec![1.0, 0.25, 0.25]);
}

#[test]
fn the_balanced_design_puts_each_sample_in_the_same_number_of_subsets() {
    let d = SubsetDesign::balanced(1000, 8, 0.7, 3).unwrap();
    assert_eq!(d.models(), 8);
    assert_eq!(d.samples(), 1000);
    assert_eq!(d.per_sample(), 6);
    assert_eq!(d.effective_ratio(), 0.75);
    for i in 0..1000 {
        let count = (0..8).filter(|&k| d.membership(k)[i]).count();
        assert_eq!(count, 6, "sample {i}");
    }
    // Subsets are near m/K of the samples and all differ.
    let sizes: Vec<usize> = (0..8).map(|k| d.positions(k).len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 6000);
    assert!(sizes.iter().all(|&s| (650..=850).contains(&s)), "{sizes:?}");
    assert_ne!(d.positions(0), d.positions(1));
    // Seeded: the same seed gives the same design, another seed another.
    assert_eq!(d, SubsetDesign::balanced(1000, 8, 0.7, 3).unwrap());
    assert_ne!(d, SubsetDesign::balanced(1000, 8, 0.7, 4).unwrap());
    // Two halves (models 0-3, 4-7), each balanced: every sample in 3 subsets of each.
    assert!(d.has_halves());
    for i in 0..1000 {
        let first = (0..4).filter(|&k| d.membership(k)[i]).count();
        assert_eq!(first, 3, "sample {i}");
    }
    // Every sample seen at least once and left out at least once (in each half), even at extreme ratios; an odd
    // K has no halves.
    for ratio in [0.99, 0.01] {
        let d = SubsetDesign::balanced(10, 4, ratio, 0).unwrap();
        assert_eq!(d.per_sample(), 2, "one of each half's two models");
        assert!(d.has_halves());
    }
    let odd = SubsetDesign::balanced(10, 5, 0.99, 0).unwrap();
    assert_eq!(odd.per_sample(), 4);
    assert!(!odd.has_halves());
    assert_eq!(
        SubsetDesign::balanced(10, 5, 0.01, 0).unwrap().per_sample(),
        1
    );
    assert!(matches!(
        SubsetDesign::balanced(10, 1, 0.5, 0),
        Err(MemoError::Invalid {
            key: "memorization.k",
            ..
        })
    ));
    assert!(SubsetDesign::balanced(10, 4, 1.0, 0).is_err());
}

fn scores(values: Vec<Option<f64>>, first_index: i64) -> TrainScores {
    TrainScores {
        source: ScoreSource::Imported {
            origin: "hand-built".into(),
        },
        indices: (0..values.len() as i64).map(|i| i + first_index).collect(),
        scores: values,
    }
}

#[test]
fn deciles_histogram_and_flags_follow_the_scores() {
    // 20 defined scores (ties included) and one undefined.
    let mut values: Vec<Option<f64>> = (0..20).map(|i| Some((i / 2) as f64 / 10.0)).collect();
    values.push(None);
    let s = scores(values, 100);
    let d = s.deciles();
    assert_eq!(d[20], None, "undefined scores get no decile");
    for (i, decile) in d.iter().take(20).enumerate() {
        assert_eq!(*decile, Some(i / 2), "sample {i}");
    }
    assert_eq!(s.defined(), 20);

    let h = s.histogram();
    assert_eq!(h.counts.iter().sum::<u64>(), 20);
    assert_eq!(h.bins.len(), h.counts.len() + 1);
    assert_eq!(h.bins[0], 0.0);
    assert!(
        h.bins.contains(&0.15),
        "the threshold falls on an edge: {:?}",
        h.bins
    );
    let bin_of = |v: f64| {
        h.bins
            .windows(2)
            .position(|w| w[0] <= v && v < w[1])
            .unwrap()
    };
    assert_eq!(h.counts[bin_of(0.9)], 2);
    assert_eq!(h.counts[bin_of(0.1)], 2);

    // atypical = score > tau; the undefined one is typical.
    let a = s.atypical(0.65);
    assert_eq!(a.iter().filter(|&&x| x).count(), 6);
    assert!(!a[20]);
    assert!((s.atypical_share(0.65) - 6.0 / 21.0).abs() < 1e-12);

    // BAT flags for another split, matched by source index: 95..105 overlaps the scored 100..121.
    let split = Split {
        x: Tensor::zeros([10, 1, 2, 2], (tch::Kind::Float, tch::Device::Cpu)),
        y: Tensor::zeros([10], (tch::Kind::Int64, tch::Device::Cpu)),
        indices: (95..105).collect(),
        source_len: 200,
        source: None,
    };
    let flags = s.atypicality(&split, 0.0);
    assert_eq!(flags.scored, 5);
    assert_eq!(
        flags.flags,
        vec![false, false, false, false, false, false, false, true, true, true],
        "indices 100 and 101 score 0 (not above 0), 102 and 103 score 0.1, 104 scores 0.2"
    );

    // Dense by source index, 0 where unscored or undefined.
    let dense = s.dense_by_source_index();
    assert_eq!(dense.len(), 121);
    assert_eq!(dense[99], 0.0);
    assert_eq!(dense[119], 0.9);
    assert_eq!(dense[120], 0.0);

    // The report section.
    let m = s.report_section(0.65, Vec::new());
    assert_eq!(m.estimator, "imported");
    assert_eq!(m.scored_samples, Some(21));
    assert_eq!(m.undefined_scores, Some(1));
    assert_eq!(m.test_consistency_cut, Some(0.35));
    assert_eq!(m.histogram, h);
}

#[test]
fn spearman_uses_average_ranks() {
    // Ranks a: 1, 2.5, 2.5, 4; b: 1, 2, 3, 4 -> Pearson of the ranks.
    let rho = spearman(&[0.1, 0.5, 0.5, 0.9], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let (ra, rb) = ([1.0, 2.5, 2.5, 4.0], [1.0, 2.0, 3.0, 4.0]);
    let mean = 2.5;
    let cov: f64 = ra
        .iter()
        .zip(&rb)
        .map(|(x, y)| (x - mean) * (y - mean))
        .sum();
    let va: f64 = ra.iter().map(|x| (x - mean) * (x - mean)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mean) * (y - mean)).sum();
    assert!((rho - cov / (va * vb).sqrt()).abs() < 1e-12);
    assert_eq!(spearman(&[3.0, 1.0, 2.0], &[30.0, 10.0, 20.0]), Some(1.0));
    assert_eq!(spearman(&[3.0, 1.0, 2.0], &[-3.0, -1.0, -2.0]), Some(-1.0));
    assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None, "constant list");
    assert_eq!(spearman(&[1.0], &[1.0]), None);
}

#[test]
fn test_groups_from_an_evaluation_match_consistency_by_dataset_index() {
    use robustd::eval::PerSample;
    use robustd::memo::groups::{test_cut, test_groups_from_eval};
    // Evaluated: dataset indices 10..16 (in another order than the consistency table); 99 has no consistency.
    let per_sample = PerSample {
        index: vec![13, 10, 11, 12, 14, 15, 99],
        label: vec![0, 1, 2, 3, 4, 5, 6],
        clean_pred: vec![0, 1, 0, 3, 0, 5, 6],
        attacks: Vec::new(),
        worst_case_robust: vec![true, false, false, true, false, false, true],
        curve: Vec::new(),
    };
    let test_indices: Vec<i64> = (10..16).collect();
    // consistency of 10..16: atypical (< 0.85) are 11, 14, 15
    let consistency = [0.9, 0.5, 1.0, 0.875, 0.25, 0.0];
    assert_eq!(test_cut(0.15), 0.85);
    let pair = test_groups_from_eval(&per_sample, &test_indices, &consistency, 0.15).unwrap();
    // typical: 13 (clean, robust), 10 (clean), 12 (clean, robust)
    assert_eq!(pair.typical.samples, 3);
    assert_eq!(pair.typical.clean, 1.0);
    assert!((pair.typical.robust - 2.0 / 3.0).abs() < 1e-12);
    // atypical: 11 (wrong), 14 (wrong), 15 (clean only)
    assert_eq!(pair.atypical.samples, 3);
    assert!((pair.atypical.clean - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(pair.atypical.robust, 0.0);
}
