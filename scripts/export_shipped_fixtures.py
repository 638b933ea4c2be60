#!/usr/bin/env python3
"""Derives "models as they are shipped" from the exported fixtures, with the real tools that make them:

  onnxruntime's offline optimizer   SessionOptions.optimized_model_filepath at the basic and extended levels
                                    (FusedConv, FusedGemm, FusedMatMul, BiasGelu, QuickGelu ...), and at the
                                    `all` level, whose NCHWc layout ops robustd does not interpret (the
                                    score-based fallback's fixture);
  onnxruntime.transformers          optimizer.optimize_model on the small ViT (Attention or MultiHeadAttention,
                                    SkipLayerNormalization, BiasGelu, FastGelu, QuickGelu; at opset 14 the
                                    contrib LayerNormalization onnxruntime registers in the default domain);
  onnxconverter-common              float16.convert_float_to_float16, with float32 or float16 graph inputs;
  a bfloat16 storage conversion     initializers stored as bfloat16 and cast to float32 where they are read (what
                                    onnxruntime's CPU provider runs: it has no bfloat16 arithmetic kernels);
  onnxruntime.quantization          quantize_static (QDQ and QOperator formats) and quantize_dynamic.

For every derived model OUT/shipped/<name>.onnx this writes <name>.npz with x (the source fixture's inputs) and
grad_weights (the weights of the logits in the gradient checks). Runs after export_fixtures.py and the trained
fixture (the Makefile's `fixtures` target); a stamp of the inputs' hashes skips work on re-runs. Only setup and
tests use this script; robustd never runs Python.
"""
import argparse
import contextlib
import hashlib
import io
import logging
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
# The trained demo CNN (Makefile: TRAINED_FIXTURE); its derived models are calibrated on real Fashion-MNIST.
TRAINED = "fmnist_cnn_small"


def ort_optimized(src, dst, level):
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.optimized_model_filepath = dst
    if os.path.exists(src + ".data"):
        # Otherwise the optimized model points at the source's external-data file, which is not beside it.
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    os.path.basename(dst) + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def transformers_optimized(src, dst, multi_head):
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions
    options = FusionOptions("vit")
    options.use_multi_head_attention = multi_head
    model = optimizer.optimize_model(src, model_type="vit", num_heads=2, hidden_size=32, opt_level=0,
                                     optimization_options=options)
    model.save_model_to_file(dst)


def fp16(src, dst, keep_io_types):
    from onnxconverter_common import float16
    model = onnx.load(src)
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=keep_io_types), dst)


def bf16_storage(src, dst):
    """Every float32 initializer of two or more elements stored as bfloat16 (round to nearest even), read
    through a Cast to float32: half the weight bytes, float32 arithmetic."""
    model = onnx.load(src)
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < 2:
            continue
        a = numpy_helper.to_array(init).astype(np.float32)
        bits = a.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        stored = onnx.TensorProto()
        stored.name, stored.data_type = init.name + "_bf16", onnx.TensorProto.BFLOAT16
        stored.dims.extend(init.dims)
        stored.raw_data = rounded.tobytes()
        init.CopyFrom(stored)
        casts.append(helper.make_node("Cast", [stored.name], [stored.name[:-5]], to=onnx.TensorProto.FLOAT,
                                      name=f"cast_{stored.name}"))
    for node in reversed(casts):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, dst)


class Calibration:
    """onnxruntime.quantization's calibration reader over a fixed batch of images."""

    def __init__(self, x, input_name="input", batch=32):
        self.batches = iter([{input_name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def quantized(src, dst, kind, calibration, per_channel=False):
    """The dynamic and QOperator forms pair uint8 activations with int8 weights, which onnxruntime multiplies on
    x86 CPUs without VNNI (AVX2; AVX-512 before Cascade Lake) with vpmaddubsw: each pair of products saturates to
    int16, and 255 * 127 * 2 does not fit (vit_dynamic's logits were 0.75 off robustd's exact integer arithmetic
    on an AVX2 machine, within tolerance on the AVX-512 CI machines). reduce_range quantizes the weights to 7 bits
    ([-64, 63]), the quantizer's own remedy, so onnxruntime computes the exact sums on every x86 CPU."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    if kind == "dynamic":
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, reduce_range=True)
        return
    qdq = kind == "qdq"
    quantize_static(src, dst, Calibration(calibration),
                    quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                    activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=not qdq)


def derived(fixtures):
    """(name, source fixture, how) for every shipped model."""
    rng = np.random.default_rng(7)
    noise = {c: rng.random((64, *c), dtype=np.float32) for c in [(1, 28, 28), (3, 32, 32)]}
    import fmnist  # noqa: E402 (beside this script)
    fashion, _ = fmnist.load("train", n=256)
    return [
        ("cnn_bn_ort_basic", "cnn_bn_legacy", lambda s, d: ort_optimized(s, d, "basic")),
        ("cnn_bn_ort_extended", "cnn_bn_legacy", lambda s, d: ort_optimized(s, d, "extended")),
        ("resnet18_ort_extended", "resnet18_legacy", lambda s, d: ort_optimized(s, d, "extended")),
        ("mobilenetv2_ort_extended", "mobilenetv2_legacy", lambda s, d: ort_optimized(s, d, "extended")),
        ("vit_ort_basic", "vit_legacy", lambda s, d: ort_optimized(s, d, "basic")),
        ("vit_ort_extended", "vit_legacy", lambda s, d: ort_optimized(s, d, "extended")),
        (f"{TRAINED}_ort_all", TRAINED, lambda s, d: ort_optimized(s, d, "all")),
        ("vit_transformers", "vit_legacy", lambda s, d: transformers_optimized(s, d, False)),
        ("vit_transformers_mha", "vit_legacy", lambda s, d: transformers_optimized(s, d, True)),
        ("vit_opset14_transformers", "vit_legacy_opset14", lambda s, d: transformers_optimized(s, d, False)),
        ("cnn_bn_fp16", "cnn_bn_legacy", lambda s, d: fp16(s, d, keep_io_types=True)),
        ("resnet18_fp16_io", "resnet18_legacy", lambda s, d: fp16(s, d, keep_io_types=False)),
        ("vit_fp16", "vit_legacy", lambda s, d: fp16(s, d, keep_io_types=True)),
        (f"{TRAINED}_fp16", TRAINED, lambda s, d: fp16(s, d, keep_io_types=True)),
        ("cnn_bn_bf16", "cnn_bn_legacy", bf16_storage),
        ("cnn_bn_qdq", "cnn_bn_legacy", lambda s, d: quantized(s, d, "qdq", noise[(1, 28, 28)])),
        ("cnn_bn_qoperator", "cnn_bn_legacy", lambda s, d: quantized(s, d, "qoperator", noise[(1, 28, 28)])),
        ("cnn_bn_dynamic", "cnn_bn_legacy", lambda s, d: quantized(s, d, "dynamic", None)),
        ("resnet18_qdq_per_channel", "resnet18_legacy",
         lambda s, d: quantized(s, d, "qdq", noise[(3, 32, 32)], per_channel=True)),
        ("resnet18_qoperator", "resnet18_legacy", lambda s, d: quantized(s, d, "qoperator", noise[(3, 32, 32)])),
        ("vit_dynamic", "vit_legacy", lambda s, d: quantized(s, d, "dynamic", None)),
        (f"{TRAINED}_qdq", TRAINED, lambda s, d: quantized(s, d, "qdq", fashion)),
        (f"{TRAINED}_qoperator", TRAINED, lambda s, d: quantized(s, d, "qoperator", fashion)),
    ]


def reference_inputs(fixtures, source):
    """x and grad_weights: the source fixture's npz, or (the trained CNN) 8 Fashion-MNIST test images."""
    npz = os.path.join(fixtures, f"{source}.npz")
    if os.path.exists(npz):
        ref = np.load(npz)
        return {"x": ref["x"], "grad_weights": ref["grad_weights"]}
    import fmnist  # noqa: E402
    x, _ = fmnist.load("test", n=8)
    return {"x": x, "grad_weights": np.random.default_rng(3).standard_normal((8, 10)).astype(np.float32)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", required=True, help="the generated fixtures (export_fixtures.py --out)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    out = os.path.join(args.fixtures, "shipped")
    os.makedirs(out, exist_ok=True)
    plan = derived(args.fixtures)
    digest = hashlib.sha256(open(os.path.abspath(__file__), "rb").read() + ort.__version__.encode())
    for source in sorted({s for _, s, _ in plan}):
        for suffix in (".onnx", ".onnx.data"):
            path = os.path.join(args.fixtures, source + suffix)
            if os.path.exists(path):
                digest.update(open(path, "rb").read())
    stamp = os.path.join(out, ".stamp")
    if not args.force and os.path.exists(stamp) and open(stamp).read() == digest.hexdigest():
        return
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" advice
    for name, source, make in plan:
        dst = os.path.join(out, f"{name}.onnx")
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            make(os.path.join(args.fixtures, f"{source}.onnx"), dst)
        np.savez(os.path.join(out, f"{name}.npz"), **reference_inputs(args.fixtures, source))
    with open(stamp, "w") as f:
        f.write(digest.hexdigest())
    print(f"[fixtures] wrote {len(plan)} shipped-form models to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
