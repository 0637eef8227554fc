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


def quantize_activations_per_row(model: Any) -> Any:
    """``model`` (an ``onnx.ModelProto`` from ``quantize_dynamic``) with a scale per row
    for every dynamically quantized activation; a new model, ``model`` is not changed."""
    from onnx import helper, numpy_helper, version_converter

    converted = version_converter.convert_version(model, OPSET)
    graph = converted.graph
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
    }
    graph.initializer.extend(
        numpy_helper.from_array(value, f"{_PREFIX}/{name}") for name, value in constants.items()
    )
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
        stale |= {scale, zero_point}
        replaced[node.name] = [
            step("Abs", [x], f"{base}/abs"),
            step("ReduceMax", [f"{base}/abs", f"{_PREFIX}/last_axis"], f"{base}/max", keepdims=1),
            # A row of zeros would give a zero scale (and 0/0 when quantizing).
            step("Max", [f"{base}/max", f"{_PREFIX}/smallest_max"], f"{base}/max_or_tiny"),
            step("Mul", [f"{base}/max_or_tiny", f"{_PREFIX}/inverse_127"], row_scale),
            # Blocked QuantizeLinear takes one zero point per block: 128 for every row.
            step("Shape", [row_scale], f"{base}/rows"),
            step("Expand", [f"{_PREFIX}/zero_point_1d", f"{base}/rows"], f"{base}/zero_points"),
            helper.make_node(
                "QuantizeLinear",
                [x, row_scale, f"{base}/zero_points"],
                [quantized],
                name=f"{base}/quantize",
                axis=-1,
                block_size=inner_sizes.pop(),
            ),
        ]
    if not replaced:
        raise UnexpectedGraph("no DynamicQuantizeLinear to rewrite")
    nodes = [n for node in graph.node if node.name not in removed
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
