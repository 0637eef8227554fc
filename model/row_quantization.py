"""Activation scales per row (per token) in a dynamically quantized ONNX file.

ONNX Runtime's dynamic quantizer (``quantize_dynamic``) quantizes each MatMul's
input at run time with one scale for the whole tensor (``DynamicQuantizeLinear``):
every text of a model call shares it, so a text's scores depended on the texts it
was batched with (``bench.batch_dependence``: 13 of 300 tweets changed answer
with 7 random batch-mates). This rewrite gives every row of every such input its
own symmetric scale, so a row is quantized from its own values only:

    x --Abs--ReduceMax(last axis)--Max(eps)--*1/127--> s            (one per row)
    x, s --QuantizeLinear(block = the whole row, zero point 128)--> q (uint8)
    q, W --MatMulIntegerToFloat(a_scale 1, b_scale per column)--*s--> y

A text's scores are then the same alone or in any batch (up to the float sums'
order), and closer to the fp32 model's (README "Quantization").

``MatMulIntegerToFloat`` (an ONNX Runtime operator) is placed here rather than left
to ONNX Runtime's fusion of ``MatMulInteger -> Cast -> Mul(a_scale * b_scale)``:
that fusion does not check that ``a_scale`` is one number and, given a scale per
row, multiplied every row by the first row's scale (measured: 19 of 64 answers
changed at ``ORT_ENABLE_ALL``, none with optimizations off). Here the row scale is
a separate ``Mul`` after it, which no fusion rewrites.

Blocked ``QuantizeLinear`` needs opset 21: the file is converted first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OPSET = 21
_PREFIX = "row_quantization"


class UnexpectedGraph(ValueError):
    """The quantized file is not laid out as ``quantize_dynamic`` lays it out."""


def quantize_activations_per_row(model: Any, *, rows_of: str | None = None) -> Any:
    """``model`` (an ``onnx.ModelProto`` from ``quantize_dynamic``) with a scale per row
    for every dynamically quantized activation; a new model, ``model`` is not changed.

    Blocked ``QuantizeLinear`` takes a zero point per row (128 for all). With
    ``rows_of`` (a graph input of shape [batch, sequence], e.g. ``input_ids``), every
    activation of rank 3 takes them from one tensor of shape [batch, sequence, 1]
    and every one of rank 2 from one of shape [batch, 1], made once from that input,
    rather than each its own (two nodes each: ~100 nodes fewer for a 12-layer
    encoder, 6-15% of a call's kernel time on two threads). That assumes those are
    the activations' rows, as in a BERT-like encoder; a model where they are not
    fails when run, so the caller runs the file once to check (``onnx_runtime``)."""
    from onnx import helper, numpy_helper, shape_inference, version_converter

    converted = version_converter.convert_version(model, OPSET)
    graph = converted.graph
    # Nodes are found by name below: an unnamed or twice-named node gets a unique one.
    names: set[str] = set()
    for index, node in enumerate(graph.node):
        if not node.name or node.name in names:
            node.name = f"{_PREFIX}/node{index}"
        names.add(node.name)
    ranks = {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in shape_inference.infer_shapes(converted).graph.value_info
        if info.type.tensor_type.HasField("shape")
    }
    initializers = {tensor.name for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str, op_type: str) -> Any:
        found = consumers.get(name, [])
        if len(found) != 1 or found[0].op_type != op_type:
            raise UnexpectedGraph(f"{name} feeds {[n.op_type for n in found]}, not one {op_type}")
        return found[0]

    def step(op_type: str, inputs: list[str], output: str, **attributes: Any) -> Any:
        return helper.make_node(op_type, inputs, [output], name=output, **attributes)

    constants: dict[str, np.ndarray] = {
        "last_axis": np.array([-1], np.int64),
        "smallest_max": np.array(1e-12, np.float32),
        "inverse_127": np.array(1 / 127, np.float32),
        "one": np.array(1, np.float32),
        "zero_point": np.array(128, np.uint8),
        "zero_point_1d": np.array([128], np.uint8),
        "one_1d": np.array([1], np.int64),
        "zero_1d": np.array([0], np.int64),
    }
    graph.initializer.extend(
        numpy_helper.from_array(value, f"{_PREFIX}/{name}") for name, value in constants.items()
    )
    shared: list[Any] = []  # the zero points made once from ``rows_of``
    shared_zero_points: dict[int, str] = {}  # rank -> those zero points
    if rows_of is not None:
        if rows_of not in {i.name for i in graph.input}:
            raise UnexpectedGraph(f"no graph input {rows_of}")
        p = f"{_PREFIX}/{rows_of}"
        shared = [
            step("Shape", [rows_of], f"{p}/shape"),
            step("Concat", [f"{p}/shape", f"{_PREFIX}/one_1d"], f"{p}/rank_3_rows", axis=0),
            step("Expand", [f"{_PREFIX}/zero_point_1d", f"{p}/rank_3_rows"], f"{p}/rank_3"),
            step("Slice", [f"{p}/shape", f"{_PREFIX}/zero_1d", f"{_PREFIX}/one_1d"], f"{p}/batch"),
            step("Concat", [f"{p}/batch", f"{_PREFIX}/one_1d"], f"{p}/rank_2_rows", axis=0),
            step("Expand", [f"{_PREFIX}/zero_point_1d", f"{p}/rank_2_rows"], f"{p}/rank_2"),
        ]
        shared_zero_points = {3: f"{p}/rank_3", 2: f"{p}/rank_2"}
    replaced: dict[str, list[Any]] = {}  # node name -> the nodes that take its place
    removed: set[str] = set()
    stale: set[str] = set()  # tensors gone, or whose shape changed
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            continue
        x = node.input[0]
        quantized, scale, zero_point = node.output
        base = f"{_PREFIX}/{node.name}"
        row_scale = f"{base}/row_scale"
        matmuls = consumers.get(quantized, [])
        if not matmuls or any(m.op_type != "MatMulInteger" for m in matmuls):
            raise UnexpectedGraph(f"{quantized} feeds {[m.op_type for m in matmuls]}")
        inner_sizes = set()
        for matmul in matmuls:
            weight = matmul.input[1]
            if weight not in initializers or tuple(matmul.input[::2]) != (quantized, zero_point):
                raise UnexpectedGraph(f"{matmul.name}: not an activation times a weight")
            inner_sizes.add(next(t.dims[0] for t in graph.initializer if t.name == weight))
            cast = only_consumer(matmul.output[0], "Cast")
            mul = only_consumer(cast.output[0], "Mul")
            scales = producers.get(next(i for i in mul.input if i != cast.output[0]))
            if scales is None or scales.op_type != "Mul" or scales.input[0] != scale:
                raise UnexpectedGraph(f"{mul.name}: not scaled by {scale} times a weight scale")
            unscaled = f"{base}/{matmul.name}/unscaled"
            replaced[matmul.name] = [
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [
                        *(quantized, weight, f"{_PREFIX}/one", scales.input[1]),
                        *(f"{_PREFIX}/zero_point", *matmul.input[3:4]),
                    ],
                    [unscaled],
                    name=unscaled,
                    domain="com.microsoft",
                ),
                step("Mul", [unscaled, row_scale], mul.output[0]),
            ]
            removed |= {cast.name, mul.name, scales.name}
            stale |= {matmul.output[0], cast.output[0], scales.output[0]}
        if len(inner_sizes) != 1:
            raise UnexpectedGraph(f"{x} feeds weights of input sizes {sorted(inner_sizes)}")
        if any(user.name not in removed for user in consumers.get(scale, [])):
            raise UnexpectedGraph(f"{scale} is read by more than the weight scales' products")
        if any(user.op_type != "MatMulInteger" for user in consumers.get(zero_point, [])):
            raise UnexpectedGraph(f"{zero_point} is read by more than the integer products")
        if {quantized, scale, zero_point} & {output.name for output in graph.output}:
            raise UnexpectedGraph(f"{node.name}'s outputs are outputs of the model")
        stale |= {scale, zero_point}
        zero_points = shared_zero_points.get(ranks.get(x, 0), "")
        made = []
        if not zero_points:
            zero_points = f"{base}/zero_points"
            made = [
                step("Shape", [row_scale], f"{base}/rows"),
                step("Expand", [f"{_PREFIX}/zero_point_1d", f"{base}/rows"], zero_points),
            ]
        replaced[node.name] = [
            step("Abs", [x], f"{base}/abs"),
            step("ReduceMax", [f"{base}/abs", f"{_PREFIX}/last_axis"], f"{base}/max", keepdims=1),
            # A row of zeros would give a zero scale (and 0/0 when quantizing).
            step("Max", [f"{base}/max", f"{_PREFIX}/smallest_max"], f"{base}/max_or_tiny"),
            step("Mul", [f"{base}/max_or_tiny", f"{_PREFIX}/inverse_127"], row_scale),
            *made,
            helper.make_node(
                "QuantizeLinear",
                [x, row_scale, zero_points],
                [quantized],
                name=f"{base}/quantize",
                axis=-1,
                block_size=inner_sizes.pop(),
            ),
        ]
    if not replaced:
        raise UnexpectedGraph("no DynamicQuantizeLinear to rewrite")
    nodes = shared + [n for node in graph.node if node.name not in removed
                      for n in replaced.get(node.name, [node])]  # fmt: skip
    del graph.node[:]
    graph.node.extend(nodes)
    # Shapes recorded for the old scales, zero points and integer products no longer hold;
    # the others stay (ONNX Runtime's fusions need them).
    kept = [info for info in graph.value_info if info.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    if not any(o.domain == "com.microsoft" for o in converted.opset_import):
        converted.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return converted
