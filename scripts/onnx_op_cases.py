#!/usr/bin/env python3
"""Single-op ONNX models for the per-op tests: each case is a directory with model.onnx and input_<k>.pb
(TensorProto), built with the `onnx` helper API. The Rust test (tests/onnx_ops.rs) runs every case through
onnxruntime and the tch interpreter on the same inputs and compares all outputs.

Integer arguments (shapes, axes, pads, split sizes) are initializers, as exporters emit them; data inputs are
graph inputs. Cases cover the opset-dependent forms (Clip 7/11, Split/Squeeze/Unsqueeze/ReduceSum 11/13,
Reduce* 13/18, Pad 11/18, Softmax 11/13).
"""
import os
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 1234
RNG = np.random.default_rng(SEED)


def f32(*shape, lo=None):
    a = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(a) + lo if lo is not None else a


def i64(values):
    return np.array(values, dtype=np.int64)


class Case:
    def __init__(self, name, op, inputs, attrs=None, opset=17, outputs=1, inits=None):
        self.name, self.op, self.inputs, self.attrs = name, op, inputs, attrs or {}
        self.opset, self.outputs, self.inits = opset, outputs, inits or {}


def build(case):
    """inputs: list of arrays (graph inputs) or ("init", array) (initializers) or None (omitted)."""
    graph_inputs, initializers, names, feeds = [], [], [], []
    for k, item in enumerate(case.inputs):
        if item is None:
            names.append("")
            continue
        name = f"in{k}"
        names.append(name)
        if isinstance(item, tuple):
            initializers.append(numpy_helper.from_array(item[1], name))
        else:
            dtype = helper.np_dtype_to_tensor_dtype(item.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, dtype, item.shape))
            feeds.append(item)
    outs = [f"out{k}" for k in range(case.outputs)]
    node = helper.make_node(case.op, names, outs, name=f"{case.op}_node", **case.attrs)
    # Output types are left to ONNX shape inference (declared as tensors of unknown element type first).
    untyped = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs]
    graph = helper.make_graph([node], case.name, graph_inputs, untyped, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8 if case.opset <= 17 else 9 if case.opset <= 20 else 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True), feeds


def cases():
    global RNG
    RNG = np.random.default_rng(SEED)  # every call draws the same inputs, in case order
    x = f32(2, 3, 4, 5)
    pos = f32(2, 3, 4, 5, lo=0.1)
    img = f32(2, 4, 7, 7)
    c = []
    for op in ["Relu", "Sigmoid", "Tanh", "Exp", "Abs", "Neg", "Floor", "Ceil", "Round", "Erf", "Sign", "Sin", "Cos",
               "Softplus", "Softsign", "HardSwish", "Identity", "IsNaN"]:
        c.append(Case(op.lower(), op, [x]))
    c.append(Case("mish", "Mish", [x], opset=18))
    for op in ["Log", "Sqrt", "Reciprocal"]:
        c.append(Case(op.lower(), op, [pos]))
    c.append(Case("not", "Not", [x > 0]))
    inf = np.array([[1.0, np.inf, -np.inf, np.nan]], np.float32)
    c.append(Case("isinf", "IsInf", [inf]))
    c.append(Case("isinf_negative_only", "IsInf", [inf], {"detect_positive": 0}))
    c += [
        Case("leaky_relu", "LeakyRelu", [x], {"alpha": 0.1}),
        Case("elu", "Elu", [x], {"alpha": 0.5}),
        Case("selu", "Selu", [x]),
        Case("celu", "Celu", [x], {"alpha": 2.0}),
        Case("thresholded_relu", "ThresholdedRelu", [x], {"alpha": 0.5}),
        Case("hard_sigmoid", "HardSigmoid", [x], {"alpha": 0.3, "beta": 0.4}),
        Case("gelu", "Gelu", [x], opset=20),
        Case("gelu_tanh", "Gelu", [x], {"approximate": "tanh"}, opset=20),
        Case("prelu", "PRelu", [x, ("init", f32(3, 1, 1))]),
    ]
    b = f32(4, 5)
    for op in ["Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]:
        c.append(Case(f"{op.lower()}_broadcast", op, [x, np.round(b) if op == "Equal" else b]))
    c += [
        Case("div_int_truncates", "Div", [i64([[7, -7, 9], [-9, 5, -5]]), i64([2, 2, -4])]),
        Case("mod_int", "Mod", [i64([[7, -7, 9], [-9, 5, -5]]), i64([3, -3, 4])]),
        Case("mod_fmod", "Mod", [x, b + 3.0], {"fmod": 1}),
        Case("pow", "Pow", [pos, f32(4, 5)]),
        Case("and", "And", [x > 0, b > 0]),
        Case("or", "Or", [x > 0, b > 0]),
        Case("xor", "Xor", [x > 0, b > 0]),
        Case("max_variadic", "Max", [x, b, f32(5)]),
        Case("min_variadic", "Min", [x, b, f32(5)]),
        Case("sum_variadic", "Sum", [x, b, f32(5)]),
        Case("mean_variadic", "Mean", [x, b, f32(5)]),
        Case("clip_opset7_attrs", "Clip", [x], {"min": -0.5, "max": 0.7}, opset=7),
        Case("clip_opset11_inputs", "Clip", [x, ("init", np.array(0.0, np.float32)), ("init", np.array(6.0, np.float32))],
             opset=11),
        Case("clip_opset13_min_only", "Clip", [x, ("init", np.array(-0.2, np.float32))], opset=13),
        Case("where", "Where", [x > 0, x, b]),
        Case("cast_to_int64", "Cast", [x * 3], {"to": TensorProto.INT64}),
        Case("cast_to_bool", "Cast", [np.round(x)], {"to": TensorProto.BOOL}),
        Case("cast_int_to_float", "Cast", [i64([[1, -2], [3, 4]])], {"to": TensorProto.FLOAT}),
        Case("castlike", "CastLike", [x * 3, ("init", i64([1]))], opset=15),
        Case("softmax_opset11_coerced", "Softmax", [f32(2, 3, 4)], {"axis": 1}, opset=11),
        Case("softmax_opset13_axis", "Softmax", [f32(2, 3, 4)], {"axis": 1}, opset=13),
        Case("logsoftmax", "LogSoftmax", [f32(2, 3, 4)], opset=13),
        Case("logsoftmax_opset11", "LogSoftmax", [f32(2, 3, 4)], opset=11),
        Case("hardmax", "Hardmax", [f32(2, 3, 4)], opset=13),
    ]
    w = f32(6, 4, 3, 3)
    c += [
        Case("conv_pads_strides", "Conv", [img, ("init", w), ("init", f32(6))], {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
        Case("conv_dilation_group", "Conv", [img, ("init", f32(6, 2, 3, 3))], {"dilations": [2, 2], "group": 2}),
        Case("conv_asymmetric_pads", "Conv", [img, ("init", w)], {"pads": [0, 1, 2, 1]}),
        Case("conv_same_upper", "Conv", [img, ("init", w)], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
        Case("conv_same_lower", "Conv", [img, ("init", f32(6, 4, 2, 2))], {"auto_pad": "SAME_LOWER"}),
        Case("conv_valid", "Conv", [img, ("init", w)], {"auto_pad": "VALID"}),
        Case("conv_depthwise", "Conv", [img, ("init", f32(4, 1, 3, 3)), ("init", f32(4))], {"group": 4, "pads": [1, 1, 1, 1]}),
        Case("conv_1d", "Conv", [f32(2, 4, 9), ("init", f32(3, 4, 3))], {"pads": [1, 1]}),
        Case("conv_transpose", "ConvTranspose", [img, ("init", f32(4, 3, 3, 3)), ("init", f32(3))],
             {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
        Case("conv_transpose_group", "ConvTranspose", [img, ("init", f32(4, 2, 2, 2))], {"strides": [2, 2], "group": 2}),
        Case("gemm_linear", "Gemm", [f32(3, 5), ("init", f32(4, 5)), ("init", f32(4))], {"transB": 1}),
        Case("gemm_trans_alpha_beta", "Gemm", [f32(5, 3), ("init", f32(5, 4)), ("init", f32(1, 4))],
             {"transA": 1, "alpha": 0.5, "beta": 2.0}),
        Case("gemm_no_bias", "Gemm", [f32(3, 5), ("init", f32(5, 4))]),
        Case("matmul_batched", "MatMul", [f32(2, 3, 5), ("init", f32(5, 4))]),
        Case("matmul_vector", "MatMul", [f32(3, 5), f32(5)]),
        Case("maxpool_pads", "MaxPool", [img], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        Case("maxpool_ceil", "MaxPool", [img], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        Case("maxpool_asymmetric", "MaxPool", [img], {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}),
        Case("maxpool_dilations", "MaxPool", [img], {"kernel_shape": [2, 2], "dilations": [2, 2]}),
        Case("maxpool_same_upper", "MaxPool", [img], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        Case("maxpool_1d", "MaxPool", [f32(2, 3, 9)], {"kernel_shape": [3], "strides": [2]}),
        Case("avgpool_exclude_pad", "AveragePool", [img], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        Case("avgpool_include_pad", "AveragePool", [img], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                           "count_include_pad": 1}),
        Case("avgpool_ceil", "AveragePool", [img], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        Case("avgpool_asymmetric", "AveragePool", [img], {"kernel_shape": [2, 2], "pads": [1, 0, 0, 1]}),
        Case("global_avgpool", "GlobalAveragePool", [img]),
        Case("global_maxpool", "GlobalMaxPool", [img]),
        Case("batchnorm", "BatchNormalization", [img, ("init", f32(4)), ("init", f32(4)), ("init", f32(4)),
                                                 ("init", f32(4, lo=0.5))], {"epsilon": 1e-3}, opset=15),
        Case("batchnorm_opset9", "BatchNormalization", [img, ("init", f32(4)), ("init", f32(4)), ("init", f32(4)),
                                                        ("init", f32(4, lo=0.5))], opset=9),
        Case("instancenorm", "InstanceNormalization", [img, ("init", f32(4)), ("init", f32(4))]),
        Case("layernorm_last", "LayerNormalization", [x, ("init", f32(5)), ("init", f32(5))], opset=17),
        Case("layernorm_axis1", "LayerNormalization", [x, ("init", f32(3, 4, 5))], {"axis": 1}, opset=17),
        Case("lrn", "LRN", [img], {"size": 3, "alpha": 1e-3, "beta": 0.75, "bias": 2.0}),
        Case("lrn_default_attrs", "LRN", [img], {"size": 5}),
        Case("dropout_eval", "Dropout", [x, ("init", np.array(0.3, np.float32))], opset=13),
        Case("flatten_axis0", "Flatten", [x], {"axis": 0}),
        Case("flatten_axis2", "Flatten", [x], {"axis": 2}),
        Case("reshape_zero_minus_one", "Reshape", [x, ("init", i64([0, -1, 5]))]),
        Case("transpose_perm", "Transpose", [x], {"perm": [0, 2, 3, 1]}),
        Case("transpose_default", "Transpose", [x]),
        Case("squeeze_opset11_attr", "Squeeze", [f32(2, 1, 3, 1)], {"axes": [1, -1]}, opset=11),
        Case("squeeze_opset13_input", "Squeeze", [f32(2, 1, 3, 1), ("init", i64([1]))], opset=13),
        Case("squeeze_all", "Squeeze", [f32(2, 1, 3, 1)], opset=13),
        Case("unsqueeze_opset11_attr", "Unsqueeze", [f32(2, 3)], {"axes": [0, 3]}, opset=11),
        Case("unsqueeze_opset13_input", "Unsqueeze", [f32(2, 3), ("init", i64([-1, 1]))], opset=13),
        Case("concat", "Concat", [x, f32(2, 3, 4, 2)], {"axis": -1}),
        Case("split_opset11_attr", "Split", [f32(2, 6)], {"axis": 1, "split": [2, 4]}, opset=11, outputs=2),
        Case("split_opset13_input", "Split", [f32(2, 6), ("init", i64([1, 2, 3]))], {"axis": 1}, opset=13, outputs=3),
        Case("split_equal", "Split", [f32(6, 2)], opset=13, outputs=3),
        Case("split_opset18_num_outputs", "Split", [f32(2, 7)], {"axis": 1, "num_outputs": 3}, opset=18, outputs=3),
        Case("slice_steps", "Slice", [x, ("init", i64([0, 1])), ("init", i64([100, -1])), ("init", i64([1, 3])),
                                      ("init", i64([2, 2]))], opset=13),
        Case("slice_negative_step", "Slice", [x, ("init", i64([-1])), ("init", i64([-100])), ("init", i64([2])),
                                              ("init", i64([-2]))], opset=13),
        Case("slice_default_axes", "Slice", [x, ("init", i64([1, 0])), ("init", i64([2, 2]))], opset=13),
        Case("gather_negative", "Gather", [x, ("init", i64([[0, -1], [1, 2]]))], {"axis": 1}),
        Case("gather_scalar", "Gather", [x, ("init", np.array(2, np.int64))], {"axis": 2}),
        Case("gather_elements", "GatherElements", [f32(3, 4), ("init", i64([[0, 3], [2, -1], [1, 1]]))], {"axis": 1}),
        Case("shape", "Shape", [x]),
        Case("shape_start_end", "Shape", [x], {"start": 1, "end": -1}, opset=15),
        Case("size", "Size", [x]),
        Case("constant_of_shape", "ConstantOfShape", [("init", i64([2, 3]))],
             {"value": numpy_helper.from_array(np.array([1.5], np.float32))}),
        Case("expand", "Expand", [f32(3, 1), ("init", i64([2, 1, 4]))]),
        Case("tile", "Tile", [f32(2, 3), ("init", i64([2, 2]))]),
        Case("range_float", "Range", [("init", np.array(0.5, np.float32)), ("init", np.array(3.0, np.float32)),
                                      ("init", np.array(0.7, np.float32))]),
        Case("range_int", "Range", [("init", np.array(10, np.int64)), ("init", np.array(1, np.int64)),
                                    ("init", np.array(-3, np.int64))]),
        Case("pad_constant", "Pad", [img, ("init", i64([0, 0, 1, 2, 0, 0, 2, 1])), ("init", np.array(0.5, np.float32))],
             opset=11),
        Case("pad_reflect", "Pad", [img, ("init", i64([0, 0, 2, 1, 0, 0, 1, 2]))], {"mode": "reflect"}, opset=13),
        Case("pad_edge", "Pad", [img, ("init", i64([0, 0, 1, 1, 0, 0, 1, 1]))], {"mode": "edge"}, opset=13),
        Case("pad_opset18_axes", "Pad", [img, ("init", i64([1, 2, 3, 0])), None, ("init", i64([2, 3]))], opset=18),
        Case("pad_negative_crop", "Pad", [img, ("init", i64([0, 0, -1, 0, 0, 0, 0, -2]))], opset=13),
        Case("reducemean_opset13_attr", "ReduceMean", [x], {"axes": [1, -1]}, opset=13),
        Case("reducemean_opset18_input", "ReduceMean", [x, ("init", i64([2]))], {"keepdims": 0}, opset=18),
        Case("reducemean_all", "ReduceMean", [x], opset=18),
        Case("reducemean_noop_empty", "ReduceMean", [x], {"noop_with_empty_axes": 1}, opset=18),
        Case("reducesum_opset11_attr", "ReduceSum", [x], {"axes": [0, 2]}, opset=11),
        Case("reducesum_opset13_input", "ReduceSum", [x, ("init", i64([3]))], {"keepdims": 0}, opset=13),
        Case("reducemax", "ReduceMax", [x, ("init", i64([1]))], opset=18),
        Case("reducemin", "ReduceMin", [x, ("init", i64([1]))], opset=18),
        Case("reduceprod", "ReduceProd", [x, ("init", i64([1, 2]))], opset=18),
        Case("reducel1", "ReduceL1", [x, ("init", i64([3]))], opset=18),
        Case("reducel2", "ReduceL2", [x, ("init", i64([3]))], opset=18),
        Case("reducesumsquare", "ReduceSumSquare", [x, ("init", i64([3]))], opset=18),
        Case("reducelogsum", "ReduceLogSum", [pos, ("init", i64([3]))], opset=18),
        Case("reducelogsumexp", "ReduceLogSumExp", [x, ("init", i64([3]))], opset=18),
        Case("reducemean_opset11", "ReduceMean", [x], {"axes": [2, 3], "keepdims": 1}, opset=11),
        Case("argmax", "ArgMax", [x], {"axis": 1, "keepdims": 0}),
        Case("argmin_last_index", "ArgMin", [i64([[1, 0, 0], [2, 2, 1]])], {"axis": 1, "select_last_index": 1}),
        Case("argmax_last_index", "ArgMax", [i64([[1, 3, 3], [2, 2, 1]])], {"axis": 1, "select_last_index": 1}),
        Case("constant", "Constant", [], {"value": numpy_helper.from_array(f32(2, 3))}),
        Case("constant_value_ints", "Constant", [], {"value_ints": [1, 2, 3]}),
    ]
    return c


def write_all(out):
    """Writes every case under OUT (replacing what was there); returns the number of cases."""
    shutil.rmtree(out, ignore_errors=True)
    all_cases = cases()
    for case in all_cases:
        model, feeds = build(case)
        onnx.checker.check_model(model)
        d = os.path.join(out, case.name)
        os.makedirs(d)
        onnx.save(model, os.path.join(d, "model.onnx"))
        for k, a in enumerate(feeds):
            with open(os.path.join(d, f"input_{k}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(a).SerializeToString())
    return len(all_cases)


if __name__ == "__main__":
    import sys
    print(write_all(sys.argv[1]))
