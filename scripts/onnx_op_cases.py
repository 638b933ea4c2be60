#!/usr/bin/env python3
"""Single-op ONNX models for the per-op tests: each case is a directory with model.onnx and input_<k>.pb
(TensorProto), built with the `onnx` helper API. The Rust test (tests/onnx_ops.rs) runs every case through
onnxruntime and the tch interpreter on the same inputs and compares all outputs.

Integer arguments (shapes, axes, pads, split sizes) are initializers, as exporters emit them; data inputs are
graph inputs. Cases cover the opset-dependent forms (Clip 7/11, Split/Squeeze/Unsqueeze/ReduceSum 11/13,
Reduce* 13/18, Pad 11/18, Softmax 11/13, Resize 10/13/18, TopK 1/11, Attention and RMSNormalization 23), the
contrib ops onnxruntime's optimizers and quantizers write (domain com.microsoft, and its default-domain
SimplifiedLayerNormalization; ONNX cannot infer their output types, so the cases declare them), the
quantization ops, and `If` with a condition that folds to a constant.
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


MS = "com.microsoft"
F, U8, I8, I32 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32


class Case:
    """`outputs`: how many; `skip`: output positions left unnamed; `out_types`: declared output element types
    (contrib ops, whose types ONNX cannot infer); `domain`: the node's domain."""

    def __init__(self, name, op, inputs, attrs=None, opset=17, outputs=1, inits=None, domain="", out_types=None,
                 skip=()):
        self.name, self.op, self.inputs, self.attrs = name, op, inputs, attrs or {}
        self.opset, self.outputs, self.inits = opset, outputs, inits or {}
        self.domain, self.out_types, self.skip = domain, out_types, set(skip)


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
    outs = ["" if k in case.skip else f"out{k}" for k in range(case.outputs)]
    # domain=None for the default domain: the field stays unset, as in the files written before contrib cases.
    node = helper.make_node(case.op, names, outs, name=f"{case.op}_node", domain=case.domain or None, **case.attrs)
    named = [o for o in outs if o]
    if case.out_types is None:
        # Output types are left to ONNX shape inference (declared as tensors of unknown element type first).
        declared = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in named]
    else:
        types = [t for k, t in enumerate(case.out_types) if outs[k]]
        declared = [helper.make_tensor_value_info(o, t, None) for o, t in zip(named, types)]
    graph = helper.make_graph([node], case.name, graph_inputs, declared, initializers)
    opsets = [helper.make_opsetid("", case.opset)] + ([helper.make_opsetid(MS, 1)] if case.domain == MS else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8 if case.opset <= 17 else 9 if case.opset <= 20 else 10
    if case.out_types is not None:
        return model, feeds
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
    return c + standard_additions() + contrib_cases() + quantization_cases()


def standard_additions():
    """Resize/Upsample, Einsum, GroupNormalization, ScatterND, GatherND, TopK, CumSum, DepthToSpace/SpaceToDepth,
    and the opset-23 Attention and RMSNormalization."""
    img = f32(2, 3, 5, 6)
    empty = ("init", np.array([], np.float32))
    s4 = lambda *v: ("init", np.array(v, np.float32))  # noqa: E731
    c = [
        Case("resize_nearest_scales", "Resize", [img, None, s4(1, 1, 2, 2)], opset=13),
        Case("resize_nearest_sizes_floor", "Resize", [img, None, None, ("init", i64([2, 3, 8, 9]))],
             {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, opset=13),
        Case("resize_nearest_round_prefer_ceil", "Resize", [img, None, s4(1, 1, 0.6, 1.7)],
             {"nearest_mode": "round_prefer_ceil"}, opset=13),
        Case("resize_linear_half_pixel", "Resize", [img, None, s4(1, 1, 1.5, 2.0)], {"mode": "linear"}, opset=13),
        Case("resize_linear_align_corners_down", "Resize", [img, None, s4(1, 1, 0.6, 0.5)],
             {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, opset=13),
        Case("resize_linear_pytorch_half_pixel", "Resize", [img, None, None, ("init", i64([2, 3, 1, 11]))],
             {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, opset=13),
        Case("resize_cubic", "Resize", [img, None, s4(1, 1, 2, 1.5)], {"mode": "cubic"}, opset=13),
        Case("resize_cubic_exclude_outside", "Resize", [img, None, s4(1, 1, 0.8, 2)],
             {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, opset=13),
        Case("resize_opset10_nearest", "Resize", [img, s4(1, 1, 2, 3)], opset=10),
        Case("resize_opset18_axes", "Resize", [img, None, ("init", np.array([2, 0.5], np.float32))],
             {"axes": [2, 3], "mode": "linear"}, opset=18),
        Case("resize_tf_crop_and_resize", "Resize", [img, s4(0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2), None,
                                                      ("init", i64([2, 3, 4, 7]))],
             {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
              "extrapolation_value": -1.0}, opset=13),
        Case("resize_empty_roi_input", "Resize", [img, empty, s4(1, 1, 2, 2)], {"mode": "linear"}, opset=13),
        Case("upsample_opset9_nearest", "Upsample", [img, s4(1, 1, 2, 3)], opset=9),
        Case("upsample_opset7_linear", "Upsample", [img], {"scales": [1.0, 1.0, 2.0, 2.0], "mode": "linear"},
             opset=7),
        Case("einsum_batched_matmul", "Einsum", [f32(2, 3, 4), f32(2, 4, 5)], {"equation": "bij,bjk->bik"},
             opset=12),
        Case("einsum_implicit_output", "Einsum", [f32(3, 4), f32(4, 5)], {"equation": "ij,jk"}, opset=12),
        Case("einsum_ellipsis_reduce", "Einsum", [f32(2, 3, 4, 5)], {"equation": "...ij->...j"}, opset=12),
        Case("groupnorm_opset18_group_scale", "GroupNormalization",
             [f32(2, 6, 4, 4), ("init", f32(3)), ("init", f32(3))], {"num_groups": 3}, opset=18, out_types=[F]),
        Case("groupnorm_opset21_channel_scale", "GroupNormalization",
             [f32(2, 6, 4, 4), ("init", f32(6)), ("init", f32(6))], {"num_groups": 2, "epsilon": 1e-3}, opset=21,
             out_types=[F]),
        Case("scatternd", "ScatterND", [f32(4, 3, 2), ("init", i64([[1], [3]])), f32(2, 3, 2)], opset=13),
        Case("scatternd_elements", "ScatterND", [f32(4, 3), ("init", i64([[0, 1], [-1, 2]])), f32(2)], opset=13),
        Case("scatternd_add", "ScatterND", [f32(4, 3), ("init", i64([[1], [1]])), f32(2, 3)],
             {"reduction": "add"}, opset=16),
        Case("scatternd_max", "ScatterND", [f32(4, 3), ("init", i64([[2], [0]])), f32(2, 3)],
             {"reduction": "max"}, opset=18),
        Case("gathernd", "GatherND", [f32(4, 3, 2), ("init", i64([[1, 2], [3, 0], [0, -1]]))], opset=13),
        Case("gathernd_batch_dims", "GatherND", [f32(2, 4, 3), ("init", i64([[[1], [3]], [[0], [2]]]))],
             {"batch_dims": 1}, opset=13),
        Case("topk", "TopK", [f32(3, 7), ("init", i64([3]))], {"axis": 1}, opset=11, outputs=2),
        Case("topk_smallest_axis0", "TopK", [f32(6, 4), ("init", i64([2]))], {"axis": 0, "largest": 0},
             opset=11, outputs=2),
        Case("topk_opset9_attr", "TopK", [f32(3, 7)], {"k": 2}, opset=9, outputs=2),
        Case("cumsum", "CumSum", [f32(3, 4), ("init", np.array(1, np.int64))], opset=14),
        Case("cumsum_exclusive_reverse", "CumSum", [f32(3, 4), ("init", np.array(0, np.int32))],
             {"exclusive": 1, "reverse": 1}, opset=14),
        Case("depth_to_space_dcr", "DepthToSpace", [f32(2, 8, 3, 2)], {"blocksize": 2}),
        Case("depth_to_space_crd", "DepthToSpace", [f32(2, 8, 3, 2)], {"blocksize": 2, "mode": "CRD"}),
        Case("space_to_depth", "SpaceToDepth", [f32(2, 3, 4, 6)], {"blocksize": 2}),
        Case("rmsnorm_opset23", "RMSNormalization", [f32(2, 5, 8), ("init", f32(8))], {"epsilon": 1e-4}, opset=23),
        Case("rmsnorm_opset23_axis1", "RMSNormalization", [f32(2, 3, 4), ("init", f32(3, 4))], {"axis": 1},
             opset=23),
        Case("attention_opset23_4d", "Attention", [f32(2, 3, 5, 4), f32(2, 3, 6, 4), f32(2, 3, 6, 4)], opset=23),
        Case("attention_opset23_3d_gqa_causal", "Attention", [f32(2, 5, 16), f32(2, 5, 8), f32(2, 5, 8)],
             {"q_num_heads": 4, "kv_num_heads": 2, "is_causal": 1}, opset=23),
        Case("attention_opset23_bool_mask", "Attention",
             [f32(1, 2, 3, 4), f32(1, 2, 5, 4), f32(1, 2, 5, 4),
              ("init", np.array([[True, True, False, True, True]] * 3))], {"scale": 0.3}, opset=23),
        Case("attention_opset23_float_mask_softcap", "Attention",
             [f32(1, 2, 3, 4), f32(1, 2, 5, 4), f32(1, 2, 5, 4), ("init", f32(3, 5))],
             {"softcap": 2.0}, opset=23),
        Case("attention_opset23_past", "Attention",
             [f32(1, 2, 2, 4), f32(1, 2, 2, 4), f32(1, 2, 2, 4), None, f32(1, 2, 3, 4), f32(1, 2, 3, 4)],
             {"is_causal": 1}, opset=23, outputs=3),
    ]
    return c


def contrib_cases():
    """onnxruntime's com.microsoft ops (and its default-domain SimplifiedLayerNormalization)."""
    img = f32(2, 4, 7, 7)
    w = ("init", f32(6, 4, 3, 3))
    b6 = ("init", f32(6))
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    seq = f32(2, 5, 8)

    def ms(name, op, inputs, attrs=None, outputs=1, out_types=None, skip=()):
        return Case(name, op, inputs, attrs, opset=17, outputs=outputs, domain=MS,
                    out_types=out_types or [F] * outputs, skip=skip)

    return [
        ms("fused_conv_relu", "FusedConv", [img, w, b6], {**conv, "activation": "Relu"}),
        ms("fused_conv_clip", "FusedConv", [img, w, b6], {**conv, "activation": "Clip",
                                                          "activation_params": [0.0, 6.0]}),
        ms("fused_conv_clip_range", "FusedConv", [img, w], {**conv, "activation": "Clip",
                                                            "activation_params": [-0.5, 0.5]}),
        ms("fused_conv_leaky", "FusedConv", [img, w, b6], {**conv, "activation": "LeakyRelu",
                                                           "activation_params": [0.2]}),
        ms("fused_conv_hardsigmoid", "FusedConv", [img, w, b6], {**conv, "activation": "HardSigmoid",
                                                                 "activation_params": [0.3, 0.4]}),
        ms("fused_conv_sigmoid", "FusedConv", [img, w], {**conv, "activation": "Sigmoid"}),
        ms("fused_conv_tanh_strided", "FusedConv", [img, w, b6], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                  "activation": "Tanh"}),
        ms("fused_conv_sum_relu", "FusedConv", [img, w, b6, f32(2, 6, 7, 7)], {**conv, "activation": "Relu"}),
        ms("fused_gemm_relu", "FusedGemm", [f32(3, 5), ("init", f32(4, 5)), ("init", f32(4))],
           {"transB": 1, "activation": "Relu"}),
        ms("fused_gemm_leaky", "FusedGemm", [f32(3, 5), ("init", f32(5, 4)), ("init", f32(4))],
           {"alpha": 0.5, "activation": "LeakyRelu", "activation_alpha": 0.1}),
        ms("fused_matmul_alpha_trans", "FusedMatMul", [f32(2, 3, 4), f32(2, 5, 4)],
           {"alpha": 0.25, "transB": 1}),
        ms("fused_matmul_trans_batch", "FusedMatMul", [f32(3, 2, 4), f32(2, 4, 5)], {"transBatchA": 1}),
        ms("gelu_contrib", "Gelu", [seq]),
        ms("bias_gelu", "BiasGelu", [seq, ("init", f32(8))]),
        ms("fast_gelu", "FastGelu", [seq, ("init", f32(8))]),
        ms("fast_gelu_no_bias", "FastGelu", [seq]),
        ms("quick_gelu", "QuickGelu", [seq]),
        ms("quick_gelu_alpha", "QuickGelu", [seq], {"alpha": 1.5}),
        ms("skip_layernorm", "SkipLayerNormalization",
           [seq, f32(2, 5, 8), ("init", f32(8)), ("init", f32(8)), ("init", f32(8))], {"epsilon": 1e-5},
           outputs=4, skip=(1, 2)),
        ms("skip_layernorm_no_beta", "SkipLayerNormalization", [seq, f32(2, 5, 8), ("init", f32(8))],
           {"epsilon": 1e-5}),
        ms("skip_simplified_layernorm", "SkipSimplifiedLayerNormalization",
           [seq, f32(2, 5, 8), ("init", f32(8))], {"epsilon": 1e-5}, outputs=4, skip=(1, 2)),
        ms("skip_simplified_layernorm_bias", "SkipSimplifiedLayerNormalization",
           [seq, f32(2, 5, 8), ("init", f32(8)), ("init", f32(8))], {"epsilon": 1e-5}),
        Case("simplified_layernorm", "SimplifiedLayerNormalization", [seq, ("init", f32(8))],
             {"epsilon": 1e-5}, opset=17, out_types=[F]),
        ms("attention_packed", "Attention", [seq, ("init", f32(8, 24)), ("init", f32(24))], {"num_heads": 2}),
        ms("attention_packed_mask", "Attention",
           [seq, ("init", f32(8, 24)), ("init", f32(24)), ("init", np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]],
                                                                                np.int32))], {"num_heads": 2}),
        ms("attention_unidirectional", "Attention", [seq, ("init", f32(8, 24)), ("init", f32(24))],
           {"num_heads": 4, "unidirectional": 1}),
        ms("attention_qkv_hidden_sizes", "Attention", [seq, ("init", f32(8, 32)), ("init", f32(32))],
           {"num_heads": 2, "qkv_hidden_sizes": [8, 8, 16]}),
        ms("multi_head_attention", "MultiHeadAttention", [seq, f32(2, 5, 8), f32(2, 5, 8), ("init", f32(24))],
           {"num_heads": 2}),
        ms("multi_head_attention_cross_mask", "MultiHeadAttention",
           [seq, f32(2, 7, 8), f32(2, 7, 8), None, ("init", np.array([[1] * 7, [1] * 4 + [0] * 3], np.int32))],
           {"num_heads": 2}),
    ]


def quantization_cases():
    """QDQ and QOperator ops, with the integer types onnxruntime's quantizers write."""
    rng = np.random.default_rng(99)
    u8 = lambda *s: rng.integers(0, 256, s, dtype=np.uint8)  # noqa: E731
    s8 = lambda *s: rng.integers(-127, 128, s, dtype=np.int8)  # noqa: E731
    scalar = lambda v, t=np.float32: ("init", np.array(v, t))  # noqa: E731
    x = f32(2, 4, 5, 5)

    def ms(name, op, inputs, attrs=None, out_types=(U8,)):
        return Case(name, op, inputs, attrs, opset=17, domain=MS, out_types=list(out_types),
                    outputs=len(out_types))

    return [
        Case("quantize_linear_uint8", "QuantizeLinear", [x, scalar(0.02), scalar(128, np.uint8)], opset=13),
        Case("quantize_linear_int8_per_axis", "QuantizeLinear",
             [x, ("init", np.array([0.01, 0.02, 0.03, 0.015], np.float32)), ("init", np.array([0, 3, -2, 1],
                                                                                            np.int8))],
             {"axis": 1}, opset=13),
        Case("dequantize_linear_uint8", "DequantizeLinear", [u8(2, 4, 5, 5), scalar(0.02), scalar(128, np.uint8)],
             opset=13),
        Case("dequantize_linear_int8_per_axis", "DequantizeLinear",
             [s8(6, 4, 3, 3), ("init", np.abs(f32(6)) * 0.01 + 0.001), ("init", np.zeros(6, np.int8))],
             {"axis": 0}, opset=13),
        ms("quantize_linear_contrib", "QuantizeLinear", [x, scalar(0.02), scalar(3, np.int8)], out_types=(I8,)),
        ms("dequantize_linear_contrib", "DequantizeLinear", [s8(2, 3, 4), scalar(0.05), scalar(-4, np.int8)],
           out_types=(F,)),
        Case("dequantize_linear_int32_bias", "DequantizeLinear",
             [("init", rng.integers(-50000, 50000, (6,), dtype=np.int32)), scalar(0.0003)], opset=13),
        # 7-bit weights ([-64, 63], what onnxruntime's quantizers write with reduce_range): onnxruntime's u8 x s8
        # kernel on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) multiplies with vpmaddubsw, which
        # saturates each pair of products to int16; 255 * 127 * 2 overflows it and onnxruntime's output was 81
        # steps off the exact result (robustd's), 255 * 64 * 2 = 32640 does not. `// 2` keeps the draws as they were.
        Case("qlinear_conv", "QLinearConv",
             [u8(2, 4, 7, 7), scalar(0.02), scalar(120, np.uint8), ("init", s8(6, 4, 3, 3) // 2),
              ("init", np.abs(f32(6)) * 0.01 + 0.002), ("init", np.zeros(6, np.int8)), scalar(0.05),
              scalar(100, np.uint8), ("init", rng.integers(-2000, 2000, (6,), dtype=np.int32))],
             {"pads": [1, 1, 1, 1]}),
        Case("qlinear_conv_int8_strided", "QLinearConv",
             [s8(2, 4, 7, 7), scalar(0.03), scalar(-3, np.int8), ("init", s8(6, 4, 3, 3)), scalar(0.004),
              scalar(0, np.int8), scalar(0.2), scalar(5, np.int8)], {"strides": [2, 2]}),
        Case("qlinear_matmul", "QLinearMatMul",
             [u8(3, 5), scalar(0.02), scalar(128, np.uint8), ("init", s8(5, 4)), scalar(0.01), scalar(0, np.int8),
              scalar(0.03), scalar(130, np.uint8)]),
        Case("matmul_integer", "MatMulInteger", [u8(3, 5), ("init", s8(5, 4)), scalar(7, np.uint8),
                                                 scalar(0, np.int8)]),
        Case("matmul_integer_no_zero_points", "MatMulInteger", [u8(2, 3, 5), ("init", s8(5, 4))]),
        Case("conv_integer", "ConvInteger", [u8(2, 4, 6, 6), ("init", s8(3, 4, 3, 3)), scalar(100, np.uint8)],
             {"pads": [1, 1, 1, 1]}),
        Case("dynamic_quantize_linear", "DynamicQuantizeLinear", [f32(3, 7)], opset=13, outputs=3),
        Case("dynamic_quantize_linear_positive", "DynamicQuantizeLinear", [f32(3, 7, lo=0.1)], opset=13, outputs=3),
        ms("qgemm", "QGemm", [u8(3, 5), scalar(0.02), scalar(128, np.uint8), ("init", s8(4, 5)),
                              ("init", np.abs(f32(4)) * 0.01 + 0.002), ("init", np.zeros(4, np.int8)),
                              ("init", rng.integers(-500, 500, (4,), dtype=np.int32)), scalar(0.05),
                              scalar(120, np.uint8)], {"transB": 1}),
        ms("qgemm_float_output", "QGemm", [u8(3, 5), scalar(0.02), scalar(128, np.uint8), ("init", s8(5, 4)),
                                           scalar(0.01), scalar(0, np.int8)], {"alpha": 0.5}, out_types=(F,)),
        ms("qlinear_add", "QLinearAdd", [u8(2, 3, 4), scalar(0.02), scalar(100, np.uint8), u8(2, 3, 4),
                                         scalar(0.03), scalar(120, np.uint8), scalar(0.04), scalar(110, np.uint8)]),
        ms("qlinear_add_int8_broadcast", "QLinearAdd",
           [s8(2, 3, 4), scalar(0.02), scalar(1, np.int8), ("init", s8(4)), scalar(0.05), scalar(-2, np.int8),
            scalar(0.06), scalar(0, np.int8)], out_types=(I8,)),
        ms("qlinear_mul", "QLinearMul", [u8(2, 3, 4), scalar(0.02), scalar(100, np.uint8), u8(2, 3, 4),
                                         scalar(0.03), scalar(120, np.uint8), scalar(0.01), scalar(110, np.uint8)]),
        ms("qlinear_global_average_pool", "QLinearGlobalAveragePool",
           [u8(2, 4, 5, 5), scalar(0.02), scalar(100, np.uint8), scalar(0.015), scalar(90, np.uint8)]),
        ms("qlinear_concat", "QLinearConcat",
           [scalar(0.03), scalar(120, np.uint8), u8(2, 3), scalar(0.02), scalar(100, np.uint8), u8(2, 4),
            scalar(0.05), scalar(128, np.uint8)], {"axis": 1}),
        ms("qlinear_sigmoid", "QLinearSigmoid", [u8(3, 6), scalar(0.05), scalar(128, np.uint8), scalar(1 / 256),
                                                 scalar(0, np.uint8)]),
        ms("qlinear_leaky_relu", "QLinearLeakyRelu", [u8(3, 6), scalar(0.05), scalar(128, np.uint8), scalar(0.03),
                                                      scalar(100, np.uint8)], {"alpha": 0.1}),
    ]


def if_models():
    """`If` whose condition folds to a constant: an initializer, and a comparison computed from initializers."""
    x = f32(2, 3)
    out = []
    for name, cond_nodes, cond_inits in [
        ("if_constant_condition", [], [numpy_helper.from_array(np.array(False), "cond")]),
        ("if_folded_condition", [helper.make_node("ReduceSum", ["w"], ["total"], keepdims=0),
                                 helper.make_node("Greater", ["total", "zero"], ["cond"])],
         [numpy_helper.from_array(np.abs(f32(4)) + 0.1, "w"), numpy_helper.from_array(np.array(0.0, np.float32),
                                                                                         "zero")]),
    ]:
        then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                                   [helper.make_tensor_value_info("t", F, [2, 3])])
        else_g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", F, [2, 3])],
                                   [numpy_helper.from_array(np.array(-2.0, np.float32), "k")])
        node = helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)
        graph = helper.make_graph(cond_nodes + [node, helper.make_node("Sigmoid", ["y"], ["out0"])], name,
                                  [helper.make_tensor_value_info("x", F, [2, 3])],
                                  [helper.make_tensor_value_info("out0", F, [2, 3])], cond_inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        out.append((name, model, [x]))
    return out


def write_all(out):
    """Writes every case under OUT (replacing what was there); returns the number of cases."""
    shutil.rmtree(out, ignore_errors=True)
    built = [(case.name, *build(case), case.out_types is None) for case in cases()]
    built += [(name, model, feeds, True) for name, model, feeds in if_models()]
    for name, model, feeds, checkable in built:
        if checkable:
            onnx.checker.check_model(model)
        d = os.path.join(out, name)
        os.makedirs(d)
        onnx.save(model, os.path.join(d, "model.onnx"))
        for k, a in enumerate(feeds):
            with open(os.path.join(d, f"input_{k}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(a).SerializeToString())
    return len(built)


if __name__ == "__main__":
    import sys
    print(write_all(sys.argv[1]))
