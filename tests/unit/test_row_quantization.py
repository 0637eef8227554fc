"""model.row_quantization on small hand-made graphs: the arithmetic it promises (each
row quantized from its own values), and a refusal where the layout is not the one
ONNX Runtime's dynamic quantizer makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.row_quantization import UnexpectedGraph, quantize_activations_per_row

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")


def _dynamic_matmul(tmp_path: Path, weight: np.ndarray, name: str = "matmul") -> object:
    """``y = x @ weight`` for x of shape [rows, 8], through quantize_dynamic."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name=name)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    source, quantized = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
    return onnx.load(str(quantized))


def _run(model: object, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(
        model.SerializeToString(),  # type: ignore[attr-defined]
        providers=["CPUExecutionProvider"],
    )
    return np.asarray(session.run(["y"], {"x": x})[0])


def test_each_row_is_quantized_from_its_own_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 4)).astype(np.float32)
    rewritten = quantize_activations_per_row(_dynamic_matmul(tmp_path, weight))
    small = rng.normal(size=(1, 8)).astype(np.float32) * 0.01
    large = rng.normal(size=(1, 8)).astype(np.float32) * 100.0
    alone = _run(rewritten, small)
    together = _run(rewritten, np.concatenate([small, large]))
    # A row beside a row 10,000 times larger: its answer does not move...
    assert np.array_equal(alone[0], together[0])
    # ...and is the row's own 8-bit quantization times the 8-bit weights: close to fp32.
    exact = small @ weight
    assert np.allclose(alone, exact, atol=0.03 * np.abs(exact).max())
    # One scale for both rows (the per-call file) loses the small row entirely.
    per_call = _run(_dynamic_matmul(tmp_path, weight), np.concatenate([small, large]))
    assert not np.allclose(per_call[0], exact, atol=0.03 * np.abs(exact).max())


def test_a_row_of_zeros_gives_zeros(tmp_path: Path) -> None:
    weight = np.ones((8, 4), np.float32)
    rewritten = quantize_activations_per_row(_dynamic_matmul(tmp_path, weight))
    assert np.array_equal(_run(rewritten, np.zeros((2, 8), np.float32)), np.zeros((2, 4)))


def test_refuses_a_file_without_the_dynamic_quantizers_layout(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    plain = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(UnexpectedGraph, match="no DynamicQuantizeLinear"):
        quantize_activations_per_row(plain)
    quantized = _dynamic_matmul(tmp_path, np.ones((8, 4), np.float32))
    graph = quantized.graph  # type: ignore[attr-defined]
    # The quantized activation read by something other than an integer MatMul.
    reader = next(n for n in graph.node if n.op_type == "DynamicQuantizeLinear").output[0]
    graph.node.append(helper.make_node("Identity", [reader], ["stray"]))
    with pytest.raises(UnexpectedGraph, match="feeds"):
        quantize_activations_per_row(quantized)


def test_zero_points_shared_by_rows_fail_loudly_where_an_activations_rows_differ(
    tmp_path: Path,
) -> None:
    """``rows_of`` assumes every rank-3 activation has the input's rows; where one does
    not, ONNX Runtime refuses to run the file (which ``model.onnx_runtime`` checks and
    then rewrites without sharing), never a wrong answer."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight = np.ones((8, 4), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["activation"], name="relu"),
            helper.make_node("MatMul", ["activation", "w"], ["y"], name="matmul"),
            helper.make_node("Shape", ["input_ids"], ["ids_shape"], name="shape"),
        ],
        "g",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", 8]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", 4]),
            helper.make_tensor_value_info("ids_shape", TensorProto.INT64, [2]),
        ],
        [numpy_helper.from_array(weight, "w")],
    )
    source, quantized = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
    shared = quantize_activations_per_row(onnx.load(str(quantized)), rows_of="input_ids")
    own = quantize_activations_per_row(onnx.load(str(quantized)))
    x = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)

    def run(model: object, ids: np.ndarray) -> np.ndarray:
        session = onnxruntime.InferenceSession(
            model.SerializeToString(),  # type: ignore[attr-defined]
            providers=["CPUExecutionProvider"],
        )
        return np.asarray(session.run(["y"], {"input_ids": ids, "x": x})[0])

    matching = run(shared, np.ones((2, 3), np.int64))  # x's rows are the input's
    assert np.array_equal(matching, run(own, np.ones((2, 3), np.int64)))
    with pytest.raises(Exception, match="same shape"):
        run(shared, np.ones((2, 5), np.int64))
    assert np.array_equal(run(own, np.ones((2, 5), np.int64)), matching)


def test_unnamed_nodes_are_rewritten_too(tmp_path: Path) -> None:
    """The rewrite finds nodes by name; ONNX Runtime's quantizer leaves the integer
    product of an unnamed MatMul unnamed."""
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(8, 4)).astype(np.float32)
    rewritten = quantize_activations_per_row(_dynamic_matmul(tmp_path, weight, name=""))
    x = rng.normal(size=(3, 8)).astype(np.float32)
    assert np.allclose(_run(rewritten, x), x @ weight, atol=0.05 * np.abs(x @ weight).max())
