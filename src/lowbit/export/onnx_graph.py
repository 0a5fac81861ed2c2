"""Rewrites of an exported ONNX graph: BatchNorm folded into the integer layers' rescale, and
weight codes of up to 16 levels stored 4 bits each.

Both work on the ``ModelProto`` the TorchScript exporter wrote (``lowbit.export.onnx``);
constants are read through the ``Identity`` nodes it inserts for initializers that hold equal
values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from onnx import helper, numpy_helper

from lowbit.export.codes import pack
from lowbit.export.onnx_layers import ONNX_FLOAT

INTEGER_OPS = ("ConvInteger", "MatMulInteger")
SMALL_CODES = 16  # levels a weight may use to be stored as 4-bit indices
# Types of 4-bit ONNX tensors (onnx.proto) and the opset whose Cast takes them.
ONNX_UINT4, ONNX_INT32, FOUR_BIT_OPSET = 21, 6, 21


def inline_identities(graph: Any) -> None:
    """Point the consumers of ``Identity(initializer)`` at the initializer itself and drop
    those nodes (the exporter shares equal initializers that way)."""
    initializers = {tensor.name for tensor in graph.initializer}
    source = {}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in initializers:
            source[node.output[0]] = node.input[0]
            graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in source:
                node.input[i] = source[name]


def fold_batch_norms(graph: Any) -> int:
    """Fold each BatchNormalization whose only input producer is an integer layer's bias Add
    (``Add(Mul(Cast(ConvInteger | MatMulInteger), multiplier), bias)``, and nothing else
    reads that Add) into the multiplier and bias: ``(acc * m + b - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)`` is ``acc * (m s) + ((b - mean) s + beta)``. The codes do
    not change. Returns the number folded."""
    values = {tensor.name: tensor for tensor in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {value.name for value in graph.output}
    folded = 0
    for norm in [node for node in graph.node if node.op_type == "BatchNormalization"]:
        add = producer.get(norm.input[0])
        if add is None or readers[add.output[0]] != 1 or add.output[0] in outputs:
            continue
        rescale = _integer_rescale(add, producer, values)
        if rescale is None:
            continue
        multiply, multiplier, bias = rescale
        gamma, beta, mean, var = (
            numpy_helper.to_array(values[name]).astype(np.float64) for name in norm.input[1:5]
        )
        epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + epsilon)
        shape = multiplier.shape  # (1, C, 1, 1) after a convolution, (C,) after a matmul
        new_multiplier = multiplier * scale.reshape(shape)
        new_bias = (bias - mean.reshape(shape)) * scale.reshape(shape) + beta.reshape(shape)
        base = norm.name or norm.output[0]
        for node, index, value, suffix in (
            (multiply, 1, new_multiplier, "multiplier"),
            (add, 1, new_bias, "bias"),
        ):
            name = f"{base}/folded_{suffix}"
            graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
            node.input[index] = name
        add.output[0] = norm.output[0]
        graph.node.remove(norm)
        folded += 1
    return folded


def _integer_rescale(add: Any, producer: dict, values: dict) -> tuple[Any, Any, Any] | None:
    """``(mul_node, multiplier, bias)`` (float64 arrays) when ``add`` ends an integer layer."""
    if add.op_type != "Add" or add.input[1] not in values:
        return None
    multiply = producer.get(add.input[0])
    if multiply is None or multiply.op_type != "Mul" or multiply.input[1] not in values:
        return None
    cast = producer.get(multiply.input[0])
    if cast is None or cast.op_type != "Cast" or cast.attribute[0].i != ONNX_FLOAT:
        return None
    accumulate = producer.get(cast.input[0])
    if accumulate is None or accumulate.op_type not in INTEGER_OPS:
        return None
    multiplier = numpy_helper.to_array(values[multiply.input[1]]).astype(np.float64)
    bias = numpy_helper.to_array(values[add.input[1]]).astype(np.float64)
    return multiply, multiplier, bias


def store_small_codes(graph: Any) -> int:
    """Store every integer layer's weight codes that take at most ``SMALL_CODES`` values as
    packed 4-bit indices (UINT4) into a table of those values: ``Gather(table,
    Cast(indices))``. Everything is constant, so onnxruntime folds it back to the 8-bit
    codes when it creates the session; ConvInteger itself takes 8-bit codes only. Needs
    opset 21. Returns the number of weights rewritten."""
    values = {tensor.name: tensor for tensor in graph.initializer}
    weights = {node.input[1] for node in graph.node if node.op_type in INTEGER_OPS}
    rewritten = 0
    for name in sorted(weights & values.keys()):
        codes = numpy_helper.to_array(values[name])
        table, indices = np.unique(codes, return_inverse=True)
        if table.size > SMALL_CODES:
            continue
        packed = pack(torch.from_numpy(indices.reshape(-1).astype(np.int64)), 4)
        graph.initializer.remove(values[name])
        graph.initializer.extend([
            helper.make_tensor(
                f"{name}.index", ONNX_UINT4, codes.shape, packed.numpy().tobytes(), raw=True
            ),
            numpy_helper.from_array(table, f"{name}.table"),
        ])
        graph.node.insert(0, helper.make_node(
            "Gather", [f"{name}.table", f"{name}.index32"], [name], name=f"{name}/decode"
        ))
        graph.node.insert(0, helper.make_node(
            "Cast", [f"{name}.index"], [f"{name}.index32"], to=ONNX_INT32, name=f"{name}/widen"
        ))
        rewritten += 1
    return rewritten


def drop_unused_initializers(graph: Any) -> None:
    """Remove initializers no node reads (the BatchNorm tensors folded away)."""
    used = {name for node in graph.node for name in node.input}
    used |= {value.name for value in graph.output}
    for tensor in list(graph.initializer):
        if tensor.name not in used:
            graph.initializer.remove(tensor)
