#!/usr/bin/env python3
"""Generates the hostile-input corpus the daemon must survive (issue 9): broken and malicious ONNX models,
external-data tricks, special files and malformed sidecar YAML. Nothing here is committed: tests/hostile_corpus.rs
runs this script into a temporary directory and drops every case into a real daemon.

Layout written into OUT:
  OUT/cases/<case>/...      the files of one case, named as they are dropped into watch/ (the model is
                            `<case>.onnx`; a sidecar `<case>.yaml`; companions as the model references them).
                            Symlinks, FIFOs and device files are created here too; the test moves (renames) each
                            case's entries into the inbox, so they arrive as they are.
  OUT/outside/              files outside the inbox that hostile cases point at (they must stay untouched).
  OUT/manifest.json         one entry per case: name, category, the files to drop (model last), the stages the
                            failure may be filed under, and words of which the error's cause must contain one.

Cases are built from the real exported fixtures (truncations, bit flips, NaN weights, external data) and from
small graphs made with the `onnx` package's helpers. Everything is seeded: the corpus is the same on every run.
Usage: hostile_corpus.py --fixtures tests/fixtures/generated --out DIR
"""
import argparse
import contextlib
import io
import json
import os
import random
import resource
import stat
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# Stages the pipeline files a failure under: intake (the daemon refused the drop), sidecar (its YAML), prepare
# (loading the ONNX graph, the dataset and the classifier checks), eval_before (the first evaluation).
LOAD = ["prepare"]
EVAL = ["prepare", "eval_before"]


class Corpus:
    def __init__(self, out):
        self.out = out
        self.cases_dir = os.path.join(out, "cases")
        self.outside = os.path.join(out, "outside")
        os.makedirs(self.cases_dir, exist_ok=True)
        os.makedirs(self.outside, exist_ok=True)
        with open(os.path.join(self.outside, "secret.bin"), "wb") as f:
            f.write(b"\x00" * 4096)
        self.manifest = []
        self.names = set()

    def dir(self, name):
        d = os.path.join(self.cases_dir, name)
        os.makedirs(d, exist_ok=True)
        return d

    def add(self, name, category, stage, cause, model=None, companions=None, sidecar=None, special=None):
        """One case. `model`: ModelProto or bytes (or None when `special` makes the model entry); `companions`:
        {file name: bytes}; `sidecar`: str or bytes; `special`: fn(case_dir) creating extra entries, returning their
        names (dropped before the model). `cause`: words of which the error cause must contain at least one."""
        assert name not in self.names, name
        self.names.add(name)
        d = self.dir(name)
        files = []
        for fname, data in (companions or {}).items():
            with open(os.path.join(d, fname), "wb") as f:
                f.write(data)
            files.append(fname)
        if special is not None:
            files.extend(special(d))
        if sidecar is not None:
            data = sidecar.encode() if isinstance(sidecar, str) else sidecar
            with open(os.path.join(d, name + ".yaml"), "wb") as f:
                f.write(data)
            files.append(name + ".yaml")
        model_file = name + ".onnx"
        if model is not None:
            data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
            with open(os.path.join(d, model_file), "wb") as f:
                f.write(data)
        files = [f for f in files if f != model_file] + [model_file]
        self.manifest.append(
            {"name": name, "category": category, "model": model_file, "files": files, "stages": stage,
             "cause": [c.lower() for c in cause]}
        )

    def write_manifest(self):
        with open(os.path.join(self.out, "manifest.json"), "w") as f:
            json.dump({"cases": self.manifest}, f, indent=1)


# ---------------------------------------------------------------------------------------------------------------
# Small graphs


def tiny(weights=None, bias=None, opset=OPSET, in_shape=("N", 1, 28, 28), classes=10):
    """A valid minimal classifier: Flatten -> Gemm(784 -> classes)."""
    rng = np.random.default_rng(0)
    w = weights if weights is not None else (rng.standard_normal((classes, 784)) * 0.05).astype(np.float32)
    b = bias if bias is not None else np.zeros(classes, np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "tiny", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return model_of(g, opset)


def model_of(graph, opset=OPSET, ir=8):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hostile-corpus")
    m.ir_version = ir
    return m


def graph_model(nodes, inputs, outputs, inits=(), opset=OPSET):
    return model_of(helper.make_graph(nodes, "g", inputs, outputs, list(inits)), opset)


def image_input(name="x", shape=("N", 1, 28, 28), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def logits_output(name="y", shape=("N", 10)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def classifier_tail(src, nodes, inits, out="y"):
    """Appends Flatten -> Gemm to 10 classes on a [N, 1, 28, 28]-sized value `src`."""
    rng = np.random.default_rng(1)
    nodes.append(helper.make_node("Flatten", [src], [src + "_flat"], axis=1))
    nodes.append(helper.make_node("Gemm", [src + "_flat", "tail_w", "tail_b"], [out], transB=1))
    inits.append(numpy_helper.from_array((rng.standard_normal((10, 784)) * 0.05).astype(np.float32), "tail_w"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "tail_b"))


def set_external(t, location, offset, length):
    """Marks `t` as external data at `location` (entries written directly: the payload may be absent)."""
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def int64s(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


# ---------------------------------------------------------------------------------------------------------------
# Protobuf wire helpers (for bit flips that must break decoding)


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, payload):
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def varint_field(number, value):
    return varint(number << 3) + varint(value)


def read_varint(buf, pos):
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def tag_offsets(buf, start=0, end=None, depth=0, nested=None):
    """Offsets of field tags in a protobuf message, descending into the length-delimited fields listed in `nested`
    ({field number: nested map}); raw payloads are never entered."""
    end = len(buf) if end is None else end
    out = []
    pos = start
    while pos < end:
        tag_pos = pos
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        out.append(tag_pos)
        if wire == 0:
            _, pos = read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            if nested and field in nested and depth < 3:
                out.extend(tag_offsets(buf, pos, pos + length, depth + 1, nested[field]))
            pos += length
        else:
            break
    return out


# ModelProto.graph(7) -> GraphProto.node(1) -> NodeProto.attribute(5); GraphProto.initializer(5) (tags only, not
# the raw_data payload); opset_import(8).
MODEL_FIELDS = {7: {1: {5: {}}, 5: {}, 11: {}, 12: {}}, 8: {}}


def raw_data_ranges(model):
    """Byte ranges of initializer payloads inside the serialized model (flips there only change weights)."""
    buf = model.SerializeToString()
    ranges = []
    for init in model.graph.initializer:
        if init.raw_data:
            at = buf.find(init.raw_data)
            if at >= 0:
                ranges.append((at, at + len(init.raw_data)))
    return buf, ranges


# ---------------------------------------------------------------------------------------------------------------
# The cases


def truncations(c, fixtures):
    for fixture in ["lenet_legacy.onnx", "cnn_bn_legacy.onnx", "mlp_legacy.onnx"]:
        data = open(os.path.join(fixtures, fixture), "rb").read()
        stem = fixture.split(".")[0]
        points = [0, 1, 2, 7, 16, 64, 200] + [int(len(data) * f) for f in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)]
        points += [len(data) - 1]
        for p in sorted(set(points)):
            c.add(f"trunc_{stem}_{p}", "truncated", LOAD,
                  ["not a valid onnx model", "truncated", "no graph", "no opset", "has no graph", "is produced by no"],
                  model=data[:p])
    # The external-data companion truncated: lengths then run past its end.
    model = open(os.path.join(fixtures, "lenet_dynamo.onnx"), "rb").read()
    weights = open(os.path.join(fixtures, "lenet_dynamo.onnx.data"), "rb").read()
    for frac in (0.0, 0.5, 0.99):
        name = f"trunc_data_lenet_{int(frac * 100)}"
        m = onnx.load_from_string(model)
        for t in m.graph.initializer:
            for kv in t.external_data:
                if kv.key == "location":
                    kv.value = name + ".onnx.data"
        c.add(name, "truncated", LOAD, ["past the end", "runs past"], model=m,
              companions={name + ".onnx.data": weights[: int(len(weights) * frac)]})


def bit_flips(c, fixtures):
    rng = random.Random(9)
    for fixture in ["lenet_legacy.onnx", "cnn_bn_legacy.onnx"]:
        m = onnx.load(os.path.join(fixtures, fixture))
        buf, payloads = raw_data_ranges(m)
        stem = fixture.split(".")[0]
        # Wire-type flips on field tags: invalid for the declared field, so decoding must fail.
        tags = tag_offsets(buf, nested=MODEL_FIELDS)
        for k, off in enumerate(rng.sample(tags, 12)):
            b = bytearray(buf)
            b[off] ^= 0x04
            c.add(f"flip_tag_{stem}_{k}", "bitflip", LOAD,
                  ["not a valid onnx model", "wire type", "protobuf", "no graph", "no opset"], model=bytes(b))
        # Random single-bit flips outside the weight payloads that onnxruntime refuses too.
        import onnxruntime as ort

        ort.set_default_logger_severity(4)
        # A flipped dimension can make onnxruntime's constant folding allocate without bound (one of the reasons
        # robustd checks limits before any engine sees a model): cap this process's address space.
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY))
        in_payload = lambda o: any(a <= o < z for a, z in payloads)
        kept = tries = 0
        while kept < 10 and tries < 600:
            tries += 1
            off = rng.randrange(len(buf))
            if in_payload(off):
                continue
            b = bytearray(buf)
            b[off] ^= 1 << rng.randrange(8)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    ort.InferenceSession(bytes(b), providers=["CPUExecutionProvider"])
                continue
            except Exception:
                pass
            c.add(f"flip_rand_{stem}_{kept}", "bitflip", EVAL, [""], model=bytes(b))
            kept += 1
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def dims_cases(c):
    m = tiny()
    m.graph.initializer[0].dims[0] = -10
    c.add("dims_negative_initializer", "dims", LOAD, ["invalid dims", "negative"], model=m)
    m = tiny()
    m.graph.initializer[0].dims[:] = [1 << 20, 1 << 20]
    c.add("dims_huge_initializer", "dims", LOAD, ["over the limit", "initializer element count"], model=m)
    m = tiny()
    m.graph.initializer[0].dims[:] = [1 << 62, 1 << 62]
    c.add("dims_overflow_initializer", "dims", LOAD, ["invalid dims", "over the limit", "overflow"], model=m)
    m = tiny()
    m.graph.initializer[0].dims[:] = [10, 785]
    c.add("dims_mismatch_data", "dims", LOAD, ["holds", "bytes of data"], model=m)
    m = tiny()
    m.graph.initializer[0].dims[:] = [10, 784, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    c.add("dims_rank16_weight", "dims", EVAL, ["gemm", "fc", "libtorch"], model=m)
    for k, shape in enumerate([("N", 1, -28, 28), ("N", 1, 0, 28), ("N", 1, 1 << 40, 1 << 40), ("N", 1, 28, 29),
                               ("N", 1 << 30, 28, 28)]):
        m = tiny(in_shape=shape)
        c.add(f"dims_input_{k}", "dims", EVAL,
              ["image", "input", "shape", "dataset", "layout", "size"], model=m)
    # A tensor that claims many GB of external data.
    m = tiny()
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.dims[:] = [1 << 16, 1 << 16]
    w.data_location = TensorProto.EXTERNAL
    set_external(w, location="dims_claimed_16gb.onnx.data", offset=0,
                                                length=(1 << 34))
    c.add("dims_claimed_16gb", "multi-gb", LOAD, ["over the limit", "past the end"], model=m,
          companions={"dims_claimed_16gb.onnx.data": b"\0" * 1024})
    m = tiny()
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.dims[:] = [1 << 14, 1 << 14]
    w.data_type = TensorProto.DOUBLE
    c.add("dims_claimed_2gb_inline", "multi-gb", LOAD, ["over the limit", "holds"], model=m)


def graph_cases(c):
    x, y = image_input(), logits_output()
    # Cycles.
    inits = []
    nodes = [helper.make_node("Add", ["x", "b2"], ["a"], name="n1"), helper.make_node("Relu", ["a2"], ["b2"], name="n2"),
             helper.make_node("Identity", ["a"], ["a2"], name="n3")]
    classifier_tail("a", nodes, inits)
    c.add("cycle_three_nodes", "cycle", LOAD, ["cycle"], model=graph_model(nodes, [x], [y], inits))
    inits = []
    nodes = [helper.make_node("Add", ["x", "s"], ["s"], name="self")]
    classifier_tail("s", nodes, inits)
    c.add("cycle_self_loop", "cycle", LOAD, ["cycle", "already produced"], model=graph_model(nodes, [x], [y], inits))
    inits = []
    nodes = [helper.make_node("Relu", ["q"], ["p"], name="p" * 5000), helper.make_node("Relu", ["p"], ["q"], name="q")]
    classifier_tail("p", nodes, inits)
    c.add("cycle_huge_node_name", "cycle", LOAD, ["cycle"], model=graph_model(nodes, [x], [y], inits))
    # Long chain cycle (many nodes caught in it).
    inits = []
    nodes = [helper.make_node("Relu", [f"c{(i + 1) % 500}"], [f"c{i}"]) for i in range(500)]
    classifier_tail("c0", nodes, inits)
    c.add("cycle_500_nodes", "cycle", LOAD, ["cycle"], model=graph_model(nodes, [x], [y], inits))

    # Missing and duplicate names.
    inits = []
    nodes = [helper.make_node("Relu", ["nothing"], ["r"], name="orphan")]
    classifier_tail("r", nodes, inits)
    c.add("missing_node_input", "names", LOAD, ["produced by no"], model=graph_model(nodes, [x], [y], inits))
    m = tiny()
    m.graph.output[0].name = "not_there"
    c.add("missing_graph_output", "names", LOAD, ["produced by no"], model=m)
    m = tiny()
    m.graph.node[1].output[0] = "f"
    c.add("duplicate_output_name", "names", LOAD, ["already produced"], model=m)
    m = tiny()
    m.graph.initializer.append(m.graph.initializer[1])
    c.add("duplicate_initializer", "names", LOAD, ["defined twice"], model=m)
    m = tiny()
    m.graph.input.append(m.graph.input[0])
    c.add("duplicate_graph_input", "names", EVAL, ["input", "one image"], model=m)
    m = tiny()
    m.graph.node[0].output[0] = "x"
    c.add("node_overwrites_input", "names", LOAD, ["already produced"], model=m)
    m = tiny()
    del m.graph.output[:]
    c.add("no_outputs", "names", LOAD, ["no outputs"], model=m)
    m = tiny()
    del m.graph.node[:]
    c.add("no_nodes", "names", LOAD, ["produced by no"], model=m)
    m = tiny()
    del m.graph.input[:]
    c.add("no_inputs", "names", LOAD, ["produced by no", "no inputs"], model=m)
    m = onnx.ModelProto()
    m.ir_version = 8
    m.opset_import.append(helper.make_opsetid("", OPSET))
    c.add("no_graph", "names", LOAD, ["no graph"], model=m)
    m = tiny()
    del m.opset_import[:]
    c.add("no_opset", "names", LOAD, ["no opset"], model=m)
    for v in (0, -1, 99, 1 << 40):
        m = tiny()
        m.opset_import[0].version = v
        c.add(f"opset_{v if v >= 0 else 'neg'}", "opset", LOAD, ["opset"], model=m)
    m = tiny()
    m.graph.node[1].op_type = ""
    c.add("empty_op_type", "unknown-op", LOAD, ["unsupported operators"], model=m)

    # Unknown ops.
    # (An `If` whose condition is computed from the input is unsupported too; a com.microsoft op robustd does not
    # interpret, like one of another unknown domain, leaves at most a score-based evaluation when onnxruntime
    # runs the model, and here it cannot.)
    for k, (op, domain) in enumerate([("FooBar", ""), ("Gemm", "com.evil"), ("LSTM", ""), ("RoiAlign", ""),
                                      ("Loop", ""), ("If", ""), ("Scan", ""), ("NonZero", ""),
                                      ("NonMaxSuppression", ""), ("BiasAdd", "com.microsoft"), ("\x1b[31mRed", ""),
                                      ("A" * 10000, "")]):
        m = tiny()
        m.graph.node[1].op_type = op
        m.graph.node[1].domain = domain
        if domain:
            m.opset_import.append(helper.make_opsetid(domain, 1))
        c.add(f"unknown_op_{k}", "unknown-op", LOAD, ["unsupported operators"], model=m)
    # Deeply nested subgraphs (If -> If -> ...), written on the wire (the Python protobuf refuses this depth): the
    # decoder's recursion limit must stop it, not the stack.
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "leaf", [], []).SerializeToString()
    for _ in range(200):
        attr = field(1, b"then_branch") + varint_field(20, 5) + field(6, graph)
        node = field(1, b"cond") + field(2, b"z") + field(4, b"If") + field(5, attr)
        graph = field(1, node) + field(2, b"nest")
    c.add("nested_subgraphs_200", "nesting", LOAD, ["not a valid onnx model", "recursion"],
          model=tiny().SerializeToString() + field(7, field(1, node)))

    # Too many nodes for limits.max_nodes (the test sets 2000).
    inits = []
    nodes = [helper.make_node("Identity", ["x" if i == 0 else f"i{i - 1}"], [f"i{i}"]) for i in range(2100)]
    classifier_tail("i2099", nodes, inits)
    c.add("too_many_nodes", "limits", LOAD, ["node count", "over the limit"], model=graph_model(nodes, [x], [y], inits))
    # Metadata and doc strings of a few MB stay in the file, not in the error.
    m = tiny()
    m.doc_string = "D" * (3 << 20)
    m.graph.node[1].op_type = "Nope"
    c.add("huge_doc_string", "names", LOAD, ["unsupported operators"], model=m)


def intermediate_cases(c):
    """Small files whose graphs would build huge tensors at run time, and op attributes that used to panic."""
    x, y = image_input(), logits_output()

    def shaped(name, nodes, inits, cause, stages=LOAD):
        classifier_tail(nodes[-1].output[0], nodes, inits)
        c.add(name, "intermediate", stages, cause, model=graph_model(nodes, [x], [y], inits))

    huge = [1 << 20, 1 << 20]
    shaped("cos_huge", [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos")], [int64s("shape", huge)],
           ["over the limit", "elements"], EVAL)
    shaped("cos_negative", [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos")],
           [int64s("shape", [-5, 3])], ["constantofshape", "negative", "cos"], EVAL)
    shaped("expand_huge", [helper.make_node("Expand", ["x", "shape"], ["big"], name="expand")],
           [int64s("shape", [1 << 16, 1, 1 << 12, 1 << 12])], ["over the limit", "elements"], EVAL)
    shaped("tile_huge", [helper.make_node("Tile", ["x", "reps"], ["big"], name="tile")],
           [int64s("reps", [1, 1 << 14, 1 << 10, 1])], ["over the limit", "elements"], EVAL)
    shaped("tile_negative", [helper.make_node("Tile", ["x", "reps"], ["big"], name="tile")],
           [int64s("reps", [1, -3, 1, 1])], ["tile"], EVAL)
    shaped("reshape_huge", [helper.make_node("Reshape", ["x", "shape"], ["big"], name="reshape")],
           [int64s("shape", [1 << 40, 1 << 40])], ["over the limit", "reshape"], EVAL)
    shaped("pad_huge", [helper.make_node("Pad", ["x", "pads"], ["big"], name="pad")],
           [int64s("pads", [0, 0, 1 << 20, 1 << 20, 0, 0, 1 << 20, 1 << 20])], ["over the limit", "elements", "pad"],
           EVAL)
    range_nodes = [helper.make_node("Range", ["r0", "r1", "r2"], ["big"], name="range")]
    shaped("range_huge", range_nodes, [numpy_helper.from_array(np.array(0, np.int64), "r0"),
                                       numpy_helper.from_array(np.array(1 << 50, np.int64), "r1"),
                                       numpy_helper.from_array(np.array(1, np.int64), "r2")],
           ["over the limit", "elements"], EVAL)
    shaped("range_empty_input", [helper.make_node("Range", ["r0", "r1", "r2"], ["big"], name="range")],
           [int64s("r0", []), int64s("r1", [5]), int64s("r2", [1])], ["range", "scalar", "empty"], EVAL)
    shaped("range_float_zero_delta", [helper.make_node("Range", ["r0", "r1", "r2"], ["big"], name="range")],
           [numpy_helper.from_array(np.array(0, np.float32), "r0"), numpy_helper.from_array(np.array(5, np.float32), "r1"),
            numpy_helper.from_array(np.array(0, np.float32), "r2")], ["range", "delta"], EVAL)
    shaped("split_zero_outputs", [helper.make_node("Split", ["x"], ["s0"], name="split", axis=1, num_outputs=0)], [],
           ["split", "num_outputs"], EVAL)
    shaped("conv_stride_zero_same", [helper.make_node("Conv", ["x", "cw"], ["cv"], name="conv", strides=[0, 0],
                                                      auto_pad="SAME_UPPER")],
           [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "cw")], ["stride", "conv"], EVAL)
    shaped("conv_weight_rank1", [helper.make_node("Conv", ["x", "cw"], ["cv"], name="conv")],
           [numpy_helper.from_array(np.ones(9, np.float32), "cw")], ["weight", "conv", "rank"], EVAL)
    shaped("conv_kernel_attr_mismatch", [helper.make_node("Conv", ["x", "cw"], ["cv"], name="conv", kernel_shape=[3])],
           [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "cw")], ["kernel_shape", "conv"], EVAL)
    shaped("convtranspose_rank2_input", [helper.make_node("Flatten", ["x"], ["fl"], axis=1),
                                         helper.make_node("ConvTranspose", ["fl", "cw"], ["ct"], name="ct")],
           [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "cw")], ["convtranspose", "spatial", "rank"],
           EVAL)
    shaped("convtranspose_short_strides", [helper.make_node("ConvTranspose", ["x", "cw"], ["ct"], name="ct",
                                                            strides=[2], pads=[1])],
           [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "cw")], ["convtranspose", "strides", "pads"],
           EVAL)
    shaped("convtranspose_huge_stride", [helper.make_node("ConvTranspose", ["x", "cw"], ["ct"], name="ct",
                                                          strides=[1 << 20, 1 << 20])],
           [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "cw")], ["over the limit", "elements",
                                                                                 "convtranspose"], EVAL)
    shaped("maxpool_stride_zero", [helper.make_node("MaxPool", ["x"], ["mp"], name="mp", kernel_shape=[2, 2],
                                                    strides=[0, 0], auto_pad="SAME_LOWER")], [],
           ["stride", "maxpool"], EVAL)
    shaped("avgpool_stride_zero_dilated", [helper.make_node("AveragePool", ["x"], ["ap"], name="ap",
                                                            kernel_shape=[2, 2], strides=[0, 0], pads=[0, 0, 1, 1])],
           [], ["stride", "averagepool"], EVAL)
    shaped("lrn_size_zero", [helper.make_node("LRN", ["x"], ["l"], name="lrn", size=0)], [], ["lrn", "size"], EVAL)
    shaped("gather_on_scalar", [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                                helper.make_node("Gather", ["s", "gi"], ["g"], name="gather")],
           [int64s("gi", [0])], ["gather", "rank", "scalar"], EVAL)
    shaped("gather_out_of_range", [helper.make_node("Gather", ["x", "gi"], ["g"], name="gather", axis=2)],
           [int64s("gi", [1000])], ["gather", "index", "out of"], EVAL)
    shaped("transpose_bad_perm", [helper.make_node("Transpose", ["x"], ["t"], name="tr", perm=[0, 0, 9, 1])], [],
           ["transpose", "perm"], EVAL)
    shaped("concat_bad_axis", [helper.make_node("Concat", ["x", "x"], ["cc"], name="cat", axis=40)], [],
           ["axis", "concat"], EVAL)
    shaped("softmax_bad_axis", [helper.make_node("Softmax", ["x"], ["sm"], name="sm", axis=-9)], [],
           ["axis", "softmax"], EVAL)
    shaped("squeeze_bad_axis", [helper.make_node("Squeeze", ["x", "ax"], ["sq"], name="sq")], [int64s("ax", [2])],
           ["squeeze"], EVAL)
    shaped("argmax_on_scalar", [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                                helper.make_node("ArgMax", ["s"], ["am"], name="argmax")], [],
           ["argmax", "rank", "scalar"], EVAL)
    shaped("prelu_rank1", [helper.make_node("ReduceSum", ["x", "ax"], ["s1"], keepdims=0),
                           helper.make_node("PRelu", ["s1", "slope"], ["pr"], name="prelu")],
           [int64s("ax", [1, 2, 3]), numpy_helper.from_array(np.ones(1, np.float32), "slope")],
           ["prelu", "rank", "shape"], EVAL)
    shaped("batchnorm_training_rank1", [helper.make_node("ReduceSum", ["x", "ax"], ["s1"], keepdims=0),
                                        helper.make_node("BatchNormalization", ["s1", "bs", "bb", "bm", "bv"], ["bn"],
                                                         name="bn", training_mode=1)],
           [int64s("ax", [1, 2, 3])] + [numpy_helper.from_array(np.ones(1, np.float32), n)
                                        for n in ("bs", "bb", "bm", "bv")],
           ["batchnormalization", "rank"], EVAL)
    shaped("cast_to_string", [helper.make_node("Cast", ["x"], ["cs"], name="cast", to=TensorProto.STRING)], [],
           ["cast", "string", "type"], EVAL)
    shaped("attr_wrong_type", [helper.make_node("Flatten", ["x"], ["fw"], name="flat")], [],
           ["axis", "attribute", "flatten"], EVAL)
    # Flatten's `axis` given as a string attribute.
    c.manifest.pop()
    c.names.discard("attr_wrong_type")
    m = tiny()
    m.graph.node[0].attribute[0].CopyFrom(helper.make_attribute("axis", "one"))
    c.add("attr_wrong_type", "intermediate", EVAL, ["axis", "attribute", "flatten"], model=m)


def nan_cases(c, fixtures):
    rng = np.random.default_rng(3)
    for k, (value, where) in enumerate([(np.nan, "weight"), (np.inf, "weight"), (-np.inf, "bias"), (np.nan, "bias"),
                                        (np.nan, "all")]):
        w = (rng.standard_normal((10, 784)) * 0.05).astype(np.float32)
        b = np.zeros(10, np.float32)
        if where == "weight":
            w[3, 100] = value
        elif where == "bias":
            b[7] = value
        else:
            w[:] = value
        c.add(f"nonfinite_tiny_{k}", "nan", EVAL, ["nan", "non-finite", "inf"], model=tiny(w, b))
    # Real fixtures: a NaN in the first conv, the BatchNorm statistics, the classifier layer.
    for fixture in ["lenet_legacy.onnx", "cnn_bn_legacy.onnx"]:
        base = onnx.load(os.path.join(fixtures, fixture))
        stem = fixture.split(".")[0]
        floats = [i for i, t in enumerate(base.graph.initializer) if t.data_type == TensorProto.FLOAT]
        for j, idx in enumerate([floats[0], floats[len(floats) // 2], floats[-1]]):
            m = onnx.ModelProto()
            m.CopyFrom(base)
            arr = numpy_helper.to_array(m.graph.initializer[idx]).copy()
            arr.flat[arr.size // 2] = np.nan
            m.graph.initializer[idx].CopyFrom(numpy_helper.from_array(arr, m.graph.initializer[idx].name))
            c.add(f"nan_{stem}_{j}", "nan", EVAL, ["nan", "non-finite"], model=m)
    # NaN in typed float_data, in float16, in double, and inside external data.
    m = tiny()
    b = m.graph.initializer[1]
    b.ClearField("raw_data")
    b.float_data[:] = [0.0] * 9 + [float("nan")]
    c.add("nan_float_data_field", "nan", EVAL, ["nan", "non-finite"], model=m)
    m = tiny()
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([np.nan] * 10, np.float16), "b"))
    c.add("nan_float16_bias", "nan", EVAL, ["nan", "non-finite", "type", "float16", "gemm"], model=m)
    name = "nan_external_data"
    w = (rng.standard_normal((10, 784)) * 0.05).astype(np.float32)
    w[0, 0] = np.nan
    m = tiny(w)
    t = m.graph.initializer[0]
    raw = t.raw_data
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    set_external(t, location=name + ".onnx.data", offset=0, length=len(raw))
    c.add(name, "nan", EVAL, ["nan", "non-finite"], model=m, companions={name + ".onnx.data": raw})


def external_cases(c):
    def ext_model(name, location, offset=0, length=None, extra=None):
        m = tiny()
        t = m.graph.initializer[0]
        raw = t.raw_data
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        entries = [("location", location)]
        if offset is not None:
            entries.append(("offset", str(offset)))
        entries.append(("length", str(len(raw) if length is None else length)))
        for k, v in entries + list(extra or []):
            e = t.external_data.add()
            e.key, e.value = k, v
        return m, raw

    stay = ["outside the inbox", "stay in the model", "refused", "not a plain"]
    for k, loc in enumerate(["/etc/passwd", "../outside/secret.bin", "sub/../../secret.bin", "/dev/zero",
                             "a/b/c.bin", "..", ".", "./ext_dot.bin", "\\\\server\\share", "ext_ctl\n.bin",
                             "x" * 300]):
        m, raw = ext_model(f"ext_path_{k}", loc)
        c.add(f"ext_path_{k}", "external", ["intake"] + LOAD, stay + ["location"], model=m)
    # A symlink in the inbox pointing outside, as the companion.
    m, raw = ext_model("ext_symlink_out", "ext_symlink_out.bin")

    def link_out(d):
        os.symlink(os.path.join(c.outside, "secret.bin"), os.path.join(d, "ext_symlink_out.bin"))
        return ["ext_symlink_out.bin"]

    c.add("ext_symlink_out", "external", ["intake"], ["not a regular file"], model=m, special=link_out)
    # A FIFO as the companion: never opened.
    m, raw = ext_model("ext_fifo", "ext_fifo.bin")

    def fifo(d):
        os.mkfifo(os.path.join(d, "ext_fifo.bin"))
        return ["ext_fifo.bin"]

    c.add("ext_fifo", "external", ["intake"], ["not a regular file"], model=m, special=fifo)
    # Lengths and offsets past the end of the file, and malformed numbers.
    for k, (off, ln) in enumerate([(0, 10**6), (10**6, 4), (2**63, 4), (8, 2**64 - 1), (0, None)]):
        name = f"ext_past_eof_{k}"
        m, raw = ext_model(name, name + ".bin", off, ln)
        data = raw if k != 4 else raw[: len(raw) // 3]
        c.add(name, "external", LOAD, ["past the end", "overflows", "not a non-negative integer", "holds"], model=m,
              companions={name + ".bin": data})
    for k, (key, val) in enumerate([("offset", "-5"), ("length", "lots"), ("offset", "1e3"), ("length", " 12")]):
        name = f"ext_bad_number_{k}"
        m, raw = ext_model(name, name + ".bin", None, len(raw) if False else None)
        t = m.graph.initializer[0]
        for e in t.external_data:
            if e.key == key:
                e.value = val
        if not any(e.key == key for e in t.external_data):
            e = t.external_data.add()
            e.key, e.value = key, val
        c.add(name, "external", LOAD, ["not a non-negative integer"], model=m, companions={name + ".bin": raw})
    m, raw = ext_model("ext_no_location", "x")
    t = m.graph.initializer[0]
    keep = [e for e in t.external_data if e.key != "location"]
    del t.external_data[:]
    for e in keep:
        t.external_data.add().CopyFrom(e)
    c.add("ext_no_location", "external", LOAD, ["location"], model=m)
    # The model names itself as its external data.
    m, raw = ext_model("ext_self", "ext_self.onnx", 0, 31360)
    c.add("ext_self", "external", ["intake"] + LOAD, ["itself", "holds", "its own"], model=m)
    # Two tensors reading overlapping ranges of one file: legal, but the second lies past the end.
    name = "ext_shared_past_end"
    m, raw = ext_model(name, name + ".bin")
    b = m.graph.initializer[1]
    b.ClearField("raw_data")
    b.data_location = TensorProto.EXTERNAL
    set_external(b, location=name + ".bin", offset=len(raw), length=40)
    c.add(name, "external", LOAD, ["past the end"], model=m, companions={name + ".bin": raw})
    # A sparse 3 GiB companion (nothing on disk): refused from its size, never read.
    name = "ext_huge_companion"
    m, raw = ext_model(name, name + ".bin")

    def sparse(d):
        with open(os.path.join(d, name + ".bin"), "wb") as f:
            f.truncate(3 << 30)
        return [name + ".bin"]

    c.add(name, "multi-gb", ["intake"], ["max_model_bytes"], model=m, special=sparse)
    # Hundreds of different external files, none present: the drop waits, then fails when they never come.
    m = tiny()
    t = m.graph.initializer[0]
    for i in range(300):
        extra = onnx.TensorProto()
        extra.CopyFrom(t)
        extra.name = f"w{i}"
        extra.ClearField("raw_data")
        extra.data_location = TensorProto.EXTERNAL
        set_external(extra, location=f"missing_{i}.bin", offset=0, length=31360)
        m.graph.initializer.append(extra)
    c.add("ext_never_arrives", "external", ["intake"], ["never arrived", "not in the inbox"], model=m)


def io_cases(c):
    """Non-image inputs and non-classifier outputs."""
    rng = np.random.default_rng(5)
    # Token ids into an embedding.
    emb = numpy_helper.from_array((rng.standard_normal((100, 16)) * 0.1).astype(np.float32), "emb")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0),
             helper.make_node("ReduceMean", ["e"], ["p"], axes=[1], keepdims=0)]
    fc = numpy_helper.from_array((rng.standard_normal((10, 16)) * 0.1).astype(np.float32), "fcw")
    nodes.append(helper.make_node("Gemm", ["p", "fcw"], ["y"], transB=1))
    m = model_of(helper.make_graph(nodes, "tokens", [image_input("ids", ("N", 16), TensorProto.INT64)],
                                   [logits_output()], [emb, fc]), 17)
    m.opset_import[0].version = 17
    c.add("input_int64_tokens", "non-image", EVAL, ["int64", "floating-point image", "image"], model=m)
    for k, (shape, dtype) in enumerate([(("N", 28, 28), TensorProto.FLOAT), (("N", 1, 1, 28, 28), TensorProto.FLOAT),
                                        (("N", 1, 28, 28), TensorProto.UINT8), (("N", 1, 28, 28), TensorProto.BOOL),
                                        (("N", 1, 28, 28), TensorProto.DOUBLE), ((), TensorProto.FLOAT),
                                        (("N", 3, 32, 32), TensorProto.FLOAT), (("N", 3, 28, 28), TensorProto.FLOAT)]):
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
                 helper.make_node("Expand", ["m", "ten"], ["y"])]
        m = graph_model(nodes, [image_input("x", shape, dtype)], [logits_output()], [int64s("ten", [1, 10])])
        c.add(f"input_shape_{k}", "non-image", EVAL,
              ["input", "layout", "image", "rank", "dataset", "type", "float", "shape", "batch"], model=m)
    # Two image inputs.
    nodes = [helper.make_node("Add", ["x", "x2"], ["s"])]
    inits = []
    classifier_tail("s", nodes, inits)
    c.add("input_two_images", "non-image", EVAL, ["one image input", "inputs"],
          model=graph_model(nodes, [image_input(), image_input("x2")], [logits_output()], inits))
    # Segmentation output [N, C, H, W].
    w = numpy_helper.from_array((rng.standard_normal((10, 1, 3, 3)) * 0.1).astype(np.float32), "segw")
    nodes = [helper.make_node("Conv", ["x", "segw"], ["y"], pads=[1, 1, 1, 1])]
    c.add("output_segmentation", "non-classifier", EVAL, ["classifier", "output", "shape"],
          model=graph_model(nodes, [image_input()], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                   ["N", 10, 28, 28])], [w]))
    # Two outputs (logits and a feature map).
    m = tiny()
    m.graph.output.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 784]))
    c.add("output_two", "non-classifier", EVAL, ["output"], model=m)
    m = tiny()
    m.graph.output.insert(0, helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 784]))
    c.add("output_two_features_first", "non-classifier", EVAL, ["output"], model=m)
    # Scalar, [N], int64 argmax, zero classes, [N, 10, 1].
    m = tiny()
    m.graph.node.append(helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("total", TensorProto.FLOAT, []))
    c.add("output_scalar", "non-classifier", EVAL, ["output", "shape", "classifier"], model=m)
    m = tiny()
    m.graph.node.append(helper.make_node("ArgMax", ["y"], ["cls"], axis=1, keepdims=0))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]))
    c.add("output_argmax_int64", "non-classifier", EVAL, ["output", "shape", "classifier", "int64", "float"],
          model=m)
    m = tiny()
    m.graph.node.append(helper.make_node("Unsqueeze", ["y", "ax2"], ["y3"]))
    m.graph.initializer.append(int64s("ax2", [2]))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("y3", TensorProto.FLOAT, ["N", 10, 1]))
    c.add("output_rank3", "non-classifier", EVAL, ["output", "shape", "classifier"], model=m)
    c.add("output_zero_classes", "non-classifier", EVAL, ["classes", "output", "shape", "gemm"],
          model=tiny(np.zeros((0, 784), np.float32), np.zeros(0, np.float32), classes=0))
    c.add("output_one_class", "non-classifier", EVAL, ["classes", "labels", "label"],
          model=tiny(np.zeros((1, 784), np.float32), np.zeros(1, np.float32), classes=1))
    c.add("output_five_classes", "non-classifier", EVAL, ["classes", "labels", "label"],
          model=tiny(np.zeros((5, 784), np.float32), np.zeros(5, np.float32), classes=5))
    # The output is the input (no classifier at all).
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    c.add("output_is_input", "non-classifier", EVAL, ["output", "shape", "classifier"],
          model=graph_model(nodes, [image_input()], [logits_output("y", ("N", 1, 28, 28))]))


def file_cases(c, fixtures):
    c.add("file_empty", "file", LOAD, ["no graph", "not a valid onnx model"], model=b"")
    c.add("file_one_byte", "file", LOAD, ["not a valid onnx model"], model=b"\x08")
    c.add("file_text", "file", LOAD, ["not a valid onnx model", "no graph"], model=b"hello, I am not a model\n" * 50)
    c.add("file_zeros", "file", LOAD, ["not a valid onnx model", "no graph"], model=b"\0" * 65536)
    c.add("file_random", "file", LOAD, ["not a valid onnx model", "no graph"],
          model=random.Random(4).randbytes(100_000))
    npz = open(os.path.join(fixtures, "lenet_legacy.npz"), "rb").read()
    c.add("file_zip", "file", LOAD, ["not a valid onnx model", "no graph"], model=npz)
    import gzip

    c.add("file_gzip_onnx", "file", LOAD, ["not a valid onnx model", "no graph"],
          model=gzip.compress(open(os.path.join(fixtures, "lenet_legacy.onnx"), "rb").read()))
    # Over limits.max_model_bytes (the test sets 8 MiB): refused at intake without being parsed.
    c.add("file_over_byte_limit", "limits", ["intake"], ["max_model_bytes"], model=b"\0" * (9 << 20))
    # A valid protobuf length prefix that claims 2 GB.
    c.add("file_claims_2gb_field", "file", LOAD, ["not a valid onnx model", "buffer underflow", "truncated"],
          model=bytes([0x3A, 0xFF, 0xFF, 0xFF, 0xFF, 0x07]) + b"\0" * 32)

    def symlink_model(d):
        os.symlink(os.path.join(c.outside, "secret.bin"), os.path.join(d, "file_symlink_out.onnx"))
        return []

    c.add("file_symlink_out", "special", ["intake"], ["symbolic link"], special=symlink_model)

    def fifo_model(d):
        os.mkfifo(os.path.join(d, "file_fifo.onnx"))
        return []

    c.add("file_fifo", "special", ["intake"], ["fifo"], special=fifo_model)

    def device_model(d):
        os.mknod(os.path.join(d, "file_device.onnx"), 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # like /dev/zero
        return []

    try:
        device_model(c.dir("probe_mknod"))
        os.unlink(os.path.join(c.dir("probe_mknod"), "file_device.onnx"))
        os.rmdir(c.dir("probe_mknod"))
        c.add("file_device", "special", ["intake"], ["device file"], special=device_model)
    except PermissionError:
        os.rmdir(c.dir("probe_mknod"))
        print("mknod not permitted: skipping the device-file case", file=sys.stderr)

    def hardlink_model(d):
        os.link(os.path.join(c.outside, "secret.bin"), os.path.join(d, "file_hardlink.onnx"))
        return []

    c.add("file_hardlink", "special", ["intake"] + LOAD, ["hard link", "links", "not a valid onnx model", "no graph"],
          special=hardlink_model)


def sidecar_cases(c):
    good = tiny()
    bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        bomb += f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
    cases = [
        ("unknown_top_key", "colour: blue\n", ["unknown field `colour`"]),
        ("unknown_nested_key", "train:\n  epoch: 3\n", ["unknown field `epoch`"]),
        ("alias_bomb", bomb, ["repetition limit", "alias", "unknown field"]),
        ("alias_bomb_in_value", bomb.replace("a: &a", "threat: {eps: 0.1}\nzz: &a"), ["repetition limit",
                                                                                       "unknown field"]),
        ("huge_over_limit", "# " + "x" * (2 << 20) + "\n", ["bytes (limit"]),
        ("huge_list_under_limit", "eval:\n  eps_curve: [" + ", ".join(["0.01"] * 150_000) + "]\n",
         ["eps_curve", "at most", "too many"]),
        ("deep_lists", "threat: " + "[" * 20000 + "]" * 20000 + "\n", ["recursion limit", "recursion"]),
        ("deep_maps", "threat: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", ["recursion limit", "recursion"]),
        ("wrong_type_eps", "threat: {eps: big}\n", ["invalid type", "eps"]),
        ("wrong_type_epochs", "train: {epochs: -1}\n", ["invalid value", "epochs"]),
        ("wrong_type_attacks", "eval: {attacks: 5}\n", ["invalid type", "attacks"]),
        ("wrong_type_top_list", "[1, 2, 3]\n", ["invalid type", "mapping"]),
        ("wrong_type_top_scalar", "42\n", ["invalid type", "mapping"]),
        ("eps_nan", "threat: {eps: .nan}\n", ["threat.eps"]),
        ("eps_inf", "threat: {eps: .inf}\n", ["threat.eps"]),
        ("lr_nan", "train: {optimizer: {lr: .nan}}\n", ["lr", "finite"]),
        ("huge_integer", "dataset: {eval_samples: 99999999999999999999999999}\n", ["eval_samples", "invalid"]),
        ("unknown_method", "train: {method: fancy}\n", ["unknown variant", "method"]),
        ("unknown_attack", "eval: {attacks: [nuke]}\n", ["unknown attack"]),
        ("name_is_a_list", "dataset: {name: [1, 2]}\n", ["invalid type", "name"]),
        ("sets_paths", "paths: {models: /}\n", ["may not set paths"]),
        ("sets_daemon", "daemon: {runner: inspect}\n", ["may not set daemon"]),
        ("sets_limits", "limits: {max_model_bytes: 1}\n", ["may not set limits"]),
        ("sets_ort_library", "runtime: {ort_library: /tmp/evil.so}\n", ["may not set runtime.ort_library"]),
        ("sets_ort_library_null", "runtime: {ort_library: null}\n", ["may not set runtime.ort_library"]),
        ("multi_document", "threat: {eps: 0.1}\n---\nthreat: {eps: 0.2}\n", ["more than one document"]),
        ("duplicate_keys", "threat: {eps: 0.1}\nthreat: {eps: 0.2}\n", ["duplicate"]),
        ("yaml_tags", "threat: !!binary aGVsbG8=\n", ["invalid type", "yaml tag"]),
        ("custom_tag", "threat: !evil {eps: 0.1}\n", ["yaml tag `!evil`"]),
        ("custom_tag_nested", "train: {optimizer: {lr: !secret 0.1}}\n", ["yaml tag `!secret`"]),
        ("long_key", "k" * 200_000 + ": 1\n", ["unknown field", "mapping values are not allowed"]),
        ("broken_syntax", "threat: {eps: [unclosed\n", ["did not find expected", "while parsing", "flow"]),
        ("tab_indent", "train:\n\tepochs: 3\n", ["tab", "found character"]),
        ("dataset_path_dev_zero", "dataset: {name: npz, path: /dev/zero}\n", ["dataset.path", "regular file"]),
        ("dataset_path_missing", "dataset: {name: npz, path: /nonexistent/robustd.npz}\n",
         ["dataset.path", "does not exist", "no such file"]),
        ("atypicality_dev_zero", "train: {method: bat, bat: {atypicality: /dev/zero}}\n",
         ["train.bat.atypicality", "regular file"]),
        ("eval_samples_negative", "dataset: {eval_samples: -20}\n", ["invalid value", "eval_samples"]),
        ("pgd_steps_absurd", "eval: {pgd: {steps: 1000000000000}}\n", ["eval.pgd.steps", "at most"]),
        ("epochs_absurd", "train: {method: pgd-at, epochs: 100000000}\n", ["train.epochs", "at most"]),
    ]
    for name, text, cause in cases:
        m = onnx.ModelProto()
        m.CopyFrom(good)
        m.doc_string = name  # each drop distinct
        c.add(f"sidecar_{name}", "sidecar", ["sidecar"], cause, model=m, sidecar=text)
    for name, data, cause in [("non_utf8", b"threat: {eps: \xff\xfe}\n", ["utf-8"]),
                              ("nul_bytes", b"threat:\x00\x00 {eps: 0.1}\n", ["control character", "invalid",
                                                                              "special characters", "nul"]),
                              ("bom_then_garbage", b"\xef\xbb\xbf\x01\x02\x03", ["control character", "invalid",
                                                                                  "special characters"])]:
        m = onnx.ModelProto()
        m.CopyFrom(good)
        m.doc_string = name
        c.add(f"sidecar_{name}", "sidecar", ["sidecar"], cause, model=m, sidecar=data)
    # An empty sidecar means no overrides, but together with a broken model it must still fail at load.
    m = tiny()
    m.graph.node[1].op_type = "Nope"
    c.add("sidecar_empty_with_bad_model", "sidecar", LOAD, ["unsupported operators"], model=m, sidecar="")

    def sidecar_dir(d):
        os.mkdir(os.path.join(d, "sidecar_is_directory.yaml"))
        return ["sidecar_is_directory.yaml"]

    def sidecar_fifo(d):
        os.mkfifo(os.path.join(d, "sidecar_is_fifo.yaml"))
        return ["sidecar_is_fifo.yaml"]

    def sidecar_link(d):
        os.symlink("/etc/passwd", os.path.join(d, "sidecar_symlink.yaml"))
        return ["sidecar_symlink.yaml"]

    for name, fn in [("is_directory", sidecar_dir), ("is_fifo", sidecar_fifo), ("symlink", sidecar_link)]:
        m = onnx.ModelProto()
        m.CopyFrom(good)
        m.doc_string = name
        c.add(f"sidecar_{name}", "sidecar", ["sidecar"], ["not a regular file"], model=m, special=fn)
    # A FIFO as dataset.path, made inside the corpus (outside the inbox).
    fifo = os.path.join(c.outside, "dataset.fifo")
    os.mkfifo(fifo)
    m = onnx.ModelProto()
    m.CopyFrom(good)
    m.doc_string = "fifo"
    c.add("sidecar_dataset_path_fifo", "sidecar", ["sidecar"], ["dataset.path", "regular file"], model=m,
          sidecar=f"dataset: {{name: npz, path: {fifo}}}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    c = Corpus(args.out)
    truncations(c, args.fixtures)
    bit_flips(c, args.fixtures)
    dims_cases(c)
    graph_cases(c)
    intermediate_cases(c)
    nan_cases(c, args.fixtures)
    external_cases(c)
    io_cases(c)
    file_cases(c, args.fixtures)
    sidecar_cases(c)
    c.write_manifest()
    cats = {}
    for case in c.manifest:
        cats[case["category"]] = cats.get(case["category"], 0) + 1
    print(f"{len(c.manifest)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(cats.items())))


if __name__ == "__main__":
    main()
