//! The real binary on real fixtures: `robustd inspect` describes every fixture (opset, shapes, parameters, external
//! data), and `robustd infer` gives the same logits through both engines and the input gradient, refuses data of
//! another type than the graph declares, and leaves no onnxruntime telemetry in the user's home.

mod onnx_support;

use std::path::Path;
use std::process::Command;

use ndarray::ArrayD;
use onnx_support::{assert_engines_agree, assert_float32_error, fixture, npz_f32, FIXTURES};
use tch::{Kind, Tensor};

fn robustd(args: &[&str]) -> String {
    robustd_with(args, |_| {})
}

/// Runs the binary with `args` after `configure` adjusted its command (environment), expecting success.
fn robustd_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_robustd"));
    command.args(args);
    configure(&mut command);
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "robustd {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn to_npy(path: &Path, t: &Tensor) {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
    ndarray_npy::write_npy(path, &ArrayD::from_shape_vec(shape, data).unwrap()).unwrap();
}

fn from_npy(path: &Path) -> Tensor {
    let a: ArrayD<f32> = ndarray_npy::read_npy(path).unwrap();
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(&a.iter().copied().collect::<Vec<_>>()).reshape(shape)
}

#[test]
fn inspect_describes_every_fixture() {
    for name in FIXTURES {
        let path = fixture(name);
        let out = robustd(&["inspect", path.to_str().unwrap()]);
        let model = onnx_support::load(name);
        assert!(
            out.contains(&format!("opset      {}", model.opset())),
            "{name}:\n{out}"
        );
        assert!(
            out.contains("input      input float [batch, "),
            "{name}:\n{out}"
        );
        assert!(
            out.contains("output     logits float [batch, 10]"),
            "{name}:\n{out}"
        );
        assert!(
            out.contains(&format!("params     {}", model.parameter_count())),
            "{name}:\n{out}"
        );
        assert!(out.contains("engine     supported"), "{name}:\n{out}");
        if name.contains("dynamo") {
            assert!(
                out.contains(&format!("external   {name}.onnx.data (")),
                "{name}:\n{out}"
            );
        } else {
            assert!(out.contains("external   none"), "{name}:\n{out}");
        }
    }
}

#[test]
fn infer_gives_the_same_logits_through_both_engines_and_the_input_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let name = "resdw_dynamo";
    let npz = fixture(name).with_extension("npz");
    let x = npz_f32(&npz, "x");
    let x_path = dir.path().join("x.npy");
    to_npy(&x_path, &x);
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7]);
    let y_path = dir.path().join("y.npy");
    ndarray_npy::write_npy(
        &y_path,
        &ArrayD::from_shape_vec(vec![8], Vec::<i64>::try_from(&y).unwrap()).unwrap(),
    )
    .unwrap();
    let model = fixture(name);
    let (tch_out, ort_out, grad) = (
        dir.path().join("tch.npy"),
        dir.path().join("ort.npy"),
        dir.path().join("g.npy"),
    );
    let m = model.to_str().unwrap();
    robustd(&[
        "infer",
        m,
        "--input",
        x_path.to_str().unwrap(),
        "--output",
        ort_out.to_str().unwrap(),
        "--engine",
        "ort",
    ]);
    robustd(&[
        "infer",
        m,
        "--input",
        x_path.to_str().unwrap(),
        "--output",
        tch_out.to_str().unwrap(),
        "--labels",
        y_path.to_str().unwrap(),
        "--grad-out",
        grad.to_str().unwrap(),
    ]);
    // Both engines within a small multiple of PyTorch's own float32 error (see onnx_parity.rs).
    assert_float32_error("infer --engine tch", &from_npy(&tch_out), &npz, "logits");
    assert_float32_error("infer --engine ort", &from_npy(&ort_out), &npz, "logits");
    // The gradient of the mean cross-entropy, recomputed in-process from the same file.
    let onnx = onnx_support::load(name);
    let graph =
        robustd::onnx::Interpreter::new(&onnx, tch::Device::Cpu, Default::default()).unwrap();
    let xg = x.set_requires_grad(true);
    let logits = graph.run(&[xg.shallow_clone()]).unwrap().remove(0);
    let loss = logits.log_softmax(-1, Kind::Float).nll_loss(&y);
    let expected = Tensor::run_backward(&[loss], &[&xg], false, false).remove(0);
    let got = from_npy(&grad);
    assert_eq!(got.size(), vec![8, 1, 28, 28]);
    // The same engine in another process, which may split its work over another number of threads: only the
    // summation order differs (the fixture inputs are away from ReLU ties, where that could move the gradient).
    let ulps = assert_engines_agree("robustd infer --grad-out", &got, &expected);
    println!("robustd infer --grad-out vs in-process: {ulps:.1} ulp");
    assert!(got.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// A graph declaring int64 inputs: onnxruntime refuses float data for it, and so does the tch engine, naming the
/// input and its declaration.
#[test]
fn infer_refuses_data_of_another_type_than_the_graph_declares() {
    let dir = tempfile::tempdir().unwrap();
    let model = onnx_support::generated_dir().join("ops/cast_int_to_float/model.onnx");
    let x = dir.path().join("x.npy");
    to_npy(&x, &Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu)));
    for engine in ["tch", "ort"] {
        let out = Command::new(env!("CARGO_BIN_EXE_robustd"))
            .args([
                "infer",
                model.to_str().unwrap(),
                "--input",
                x.to_str().unwrap(),
            ])
            .args(["--output", dir.path().join("y.npy").to_str().unwrap()])
            .args(["--engine", engine])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{engine}: {stderr}");
        if engine == "tch" {
            assert!(
                stderr.contains("input `in0` is declared int64") && stderr.contains("given float"),
                "{stderr}"
            );
        }
    }
}

/// onnxruntime 1.31.1 records telemetry events (the process's path, OS, CPU model, a device id, sessions, model
/// loads, error messages) in `$HOME/.cache/Microsoft/DeveloperTools/.onnxruntime/` for upload, unless the process
/// says otherwise (src/runtime.rs `disable_ort_telemetry`). A run through onnxruntime with a fresh HOME and the
/// switch not set by the caller must leave that store absent.
#[test]
fn infer_through_onnxruntime_leaves_no_telemetry_in_home() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = "resdw_dynamo";
    let x_path = dir.path().join("x.npy");
    to_npy(&x_path, &npz_f32(&fixture(name).with_extension("npz"), "x"));
    let out_path = dir.path().join("ort.npy");
    robustd_with(
        &[
            "infer",
            fixture(name).to_str().unwrap(),
            "--input",
            x_path.to_str().unwrap(),
            "--output",
            out_path.to_str().unwrap(),
            "--engine",
            "ort",
        ],
        |command| {
            command
                .env("HOME", home.path())
                .env_remove("XDG_CACHE_HOME")
                .env_remove("ORT_DISABLE_TELEMETRY");
        },
    );
    assert!(out_path.exists(), "infer wrote no logits");
    let store = home.path().join(".cache/Microsoft");
    assert!(
        !store.exists(),
        "onnxruntime recorded telemetry in HOME: {}",
        store.display()
    );
}
