#!/usr/bin/env python3
"""Writes the ONNX backend test cases that the `onnx` package carries into OUT, for the op types robustd
implements (read from the op tables in src/onnx/ops/*.rs):
  OUT/node/<case>/model.onnx + test_data_set_<k>/input_<i>.pb, output_<i>.pb   from collect_testcases(None)
  OUT/pytorch-converted/<case>/...                                             copied from the package
tests/onnx_backend.rs runs them all; tests/onnx_backend_pass.txt lists the cases that must pass.
"""
import glob
import os
import re
import shutil
import sys
import warnings

import numpy as np
import onnx
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def supported_ops():
    ops = set()
    for path in glob.glob(os.path.join(HERE, "..", "src", "onnx", "ops", "*.rs")):
        # Table entries: `("OpType", function)` or `("OpType", |c, i| ...)`, one or several to a line.
        ops.update(re.findall(r'\("([A-Z][A-Za-z0-9]*)",\s*[a-z_|]', open(path).read()))
    return ops


def graph_ops(graph):
    for n in graph.node:
        yield n.domain, n.op_type
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from graph_ops(a.g)


def write_tensors(directory, prefix, arrays):
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            return False
        with open(os.path.join(directory, f"{prefix}_{i}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(a).SerializeToString())
    return True


def write_all(out):
    from onnx.backend.test.case.node import collect_testcases

    shutil.rmtree(out, ignore_errors=True)
    ops = supported_ops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    written = 0
    for case in cases:
        if not all(d in ("", "ai.onnx") and op in ops for d, op in graph_ops(case.model.graph)):
            continue
        d = os.path.join(out, "node", case.name)
        os.makedirs(d)
        onnx.save(case.model, os.path.join(d, "model.onnx"))
        ok = True
        for k, (inputs, outputs) in enumerate(case.data_sets or []):
            sd = os.path.join(d, f"test_data_set_{k}")
            os.makedirs(sd)
            ok &= write_tensors(sd, "input", inputs) and write_tensors(sd, "output", outputs)
        if not ok:  # sequences/optionals: not tensors, not robustd's business
            shutil.rmtree(d)
            continue
        written += 1
    src = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "pytorch-converted")
    shutil.copytree(src, os.path.join(out, "pytorch-converted"))
    return written, len(os.listdir(src))


if __name__ == "__main__":
    node, converted = write_all(sys.argv[1])
    print(f"[fixtures] wrote {node} backend node cases and {converted} pytorch-converted cases", file=sys.stderr)
