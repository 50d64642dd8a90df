"""Read a frozen TensorFlow ``GraphDef`` without TensorFlow: nodes, constants, and a reference executor.

A frozen graph is one protobuf message (``GraphDef``) whose weights are ``Const`` nodes. The decoder
below reads the protobuf wire format directly (only the fields a frozen inference graph uses), so the
FaceNet conversion depends neither on TensorFlow nor on OpenCV's dnn importer, which newer OpenCV
releases cannot apply to this graph. :func:`run_graph` executes the graph's handful of operations with
torch, as an independent reference for checking a conversion: it follows the graph's own wiring, not
the module layout of the converted model.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError

# TensorFlow DataType enum values that frozen inference graphs use.
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 10: np.bool_, 19: np.float16}


@dataclass
class GraphNode:
    """One node of a GraphDef: its name, operation, inputs and decoded attributes."""

    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message; length-delimited values are bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield number, wire, value


def _packed_varints(value: bytes | int, wire: int) -> list[int]:
    if wire == 0:
        return [int(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _tensor(buf: bytes) -> np.ndarray:
    """Decode a TensorProto into an array."""
    dtype, shape, content = np.float32, [], None
    floats: list[float] = []
    ints: list[int] = []
    for number, wire, value in _fields(buf):
        if number == 1:
            if value not in _DTYPES:
                raise ValueError(f"unsupported tensor dtype {value}")
            dtype = _DTYPES[value]
        elif number == 2:
            for dn, _, dv in _fields(value):
                if dn == 2:  # Dim
                    size = 0
                    for sn, _, sv in _fields(dv):
                        if sn == 1:
                            size = _signed64(sv)
                    shape.append(size)
        elif number == 4:
            content = value
        elif number == 5:  # float_val
            floats += (
                [struct.unpack("<f", value)[0]]
                if wire == 5
                else list(struct.unpack(f"<{len(value) // 4}f", value))
            )
        elif number in (7, 10):  # int_val, int64_val
            ints += [_signed64(v) for v in _packed_varints(value, wire)]
    count = math.prod(shape) if shape else 1
    if content is not None:
        arr = np.frombuffer(content, dtype=dtype).copy()
    else:
        vals = floats if np.dtype(dtype).kind == "f" else ints
        arr = np.asarray(vals, dtype=dtype)
        if arr.size == 1 and count != 1:  # TF stores a splat constant as its single value
            arr = np.full(count, arr[0], dtype=dtype)
    if arr.size != count:
        raise ValueError(f"tensor has {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def _attr(buf: bytes) -> Any:
    """Decode an AttrValue into a Python value (list, bytes, int, float, bool or array)."""
    for number, _, value in _fields(buf):
        if number == 1:  # ListValue: s=2, i=3, f=4
            out: list[Any] = []
            for ln, lw, lv in _fields(value):
                if ln == 2:
                    out.append(lv.decode("utf-8", "replace"))
                elif ln == 3:
                    out += [_signed64(v) for v in _packed_varints(lv, lw)]
                elif ln == 4:
                    out += (
                        list(struct.unpack(f"<{len(lv) // 4}f", lv))
                        if lw == 2
                        else [struct.unpack("<f", lv)[0]]
                    )
            return out
        if number == 2:
            return value.decode("utf-8", "replace")
        if number == 3:
            return _signed64(value)
        if number == 4:
            return struct.unpack("<f", value)[0]
        if number == 5:
            return bool(value)
        if number == 8:
            return _tensor(value)
    return None


def parse_graph_def(data: bytes) -> list[GraphNode]:
    """Decode a serialised GraphDef into its nodes, in file order."""
    nodes = []
    for number, _, value in _fields(data):
        if number != 1:
            continue
        name, op, inputs, attrs = "", "", [], {}
        for nn, _, nv in _fields(value):
            if nn == 1:
                name = nv.decode()
            elif nn == 2:
                op = nv.decode()
            elif nn == 3:
                inputs.append(nv.decode())
            elif nn == 5:
                key, val = "", b""
                for en, _, ev in _fields(nv):
                    if en == 1:
                        key = ev.decode()
                    elif en == 2:
                        val = ev
                attrs[key] = _attr(val)
        nodes.append(GraphNode(name, op, inputs, attrs))
    return nodes


def read_graph_def(path) -> list[GraphNode]:
    """The nodes of a frozen GraphDef file; one-line InputError when it is not one."""
    try:
        data = open(path, "rb").read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        nodes = parse_graph_def(data)
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise InputError(f"{path}: not a readable TensorFlow graph ({exc})") from None
    if not nodes or not any(n.op == "Placeholder" for n in nodes):
        raise InputError(f"{path}: not a readable TensorFlow graph (no input placeholder)")
    return nodes


def constants(nodes: list[GraphNode]) -> dict[str, np.ndarray]:
    """Every Const node's value, by node name."""
    return {n.name: n.attrs["value"] for n in nodes if n.op == "Const" and "value" in n.attrs}


def _ref(name: str) -> str:
    return name.split(":")[0].lstrip("^")


def layer_weights(nodes: list[GraphNode]) -> dict[str, list[np.ndarray]]:
    """Weights per layer in PyTorch layout: convolutions (OIHW weight, folded bias), MatMul, FusedBatchNorm.

    Conv2D -> [weight (O, I, H, W), bias of the BiasAdd that consumes it]; MatMul -> [weight (out, in)];
    FusedBatchNorm -> [mean, variance, offset, scale]. Keys are the node names.
    """
    const = constants(nodes)
    bias_of = {_ref(n.inputs[0]): const[_ref(n.inputs[1])] for n in nodes if n.op == "BiasAdd"}
    out: dict[str, list[np.ndarray]] = {}
    for n in nodes:
        if n.op == "Conv2D":
            w = const[_ref(n.inputs[1])]
            bias = bias_of.get(n.name, np.zeros(w.shape[3], np.float32))
            out[n.name] = [np.ascontiguousarray(w.transpose(3, 2, 0, 1)), bias]
        elif n.op == "MatMul":
            w = const[_ref(n.inputs[1])]
            out[n.name] = [np.ascontiguousarray(w if n.attrs.get("transpose_b") else w.T)]
        elif n.op in ("FusedBatchNorm", "FusedBatchNormV3"):
            scale, offset, mean, var = (const[_ref(i)].reshape(-1) for i in n.inputs[1:5])
            out[n.name] = [mean, var, offset, scale]
    return out


def topological_order(nodes: list[GraphNode]) -> list[GraphNode]:
    """The nodes ordered so that every node comes after its inputs (frozen graphs are not always so)."""
    by_name = {n.name: n for n in nodes}
    done: set[str] = set()
    order: list[GraphNode] = []
    for root in nodes:
        stack = [(root.name, False)]
        while stack:
            name, expanded = stack.pop()
            if name in done or name not in by_name:
                continue
            if expanded:
                done.add(name)
                order.append(by_name[name])
                continue
            stack.append((name, True))
            stack += [(_ref(i), False) for i in by_name[name].inputs if _ref(i) not in done]
    return order


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def run_graph(nodes: list[GraphNode], x: np.ndarray, output: str | None = None) -> np.ndarray:
    """Execute an NHWC float graph on ``x`` (N, H, W, C) with torch; return the named (or last) node's value."""
    import torch
    import torch.nn.functional as F

    const = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in constants(nodes).items()}
    vals: dict[str, torch.Tensor] = {}

    def get(name: str) -> torch.Tensor:
        name = _ref(name)
        return vals[name] if name in vals else const[name]

    def pad_nchw(t: torch.Tensor, k: tuple[int, int], s: tuple[int, int], padding: str, value: float):
        if padding != "SAME":
            return t
        ph = _same_pad(t.shape[2], k[0], s[0])
        pw = _same_pad(t.shape[3], k[1], s[1])
        return F.pad(t, (pw[0], pw[1], ph[0], ph[1]), value=value)

    last = None
    for n in topological_order(nodes):
        if n.op in ("Const",):
            continue
        a = n.attrs
        if n.op == "Placeholder":
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        elif n.op in ("Identity", "StopGradient"):
            v = get(n.inputs[0])
        elif n.op == "Conv2D":
            inp, w = get(n.inputs[0]).permute(0, 3, 1, 2), get(n.inputs[1]).permute(3, 2, 0, 1)
            s = tuple(a["strides"][1:3])
            inp = pad_nchw(inp, tuple(w.shape[2:]), s, a["padding"], 0.0)
            v = F.conv2d(inp, w, stride=s).permute(0, 2, 3, 1)
        elif n.op in ("BiasAdd", "Add", "AddV2"):
            v = get(n.inputs[0]) + get(n.inputs[1])
        elif n.op == "Mul":
            v = get(n.inputs[0]) * get(n.inputs[1])
        elif n.op == "Relu":
            v = torch.relu(get(n.inputs[0]))
        elif n.op in ("MaxPool", "AvgPool"):
            inp = get(n.inputs[0]).permute(0, 3, 1, 2)
            k, s = tuple(a["ksize"][1:3]), tuple(a["strides"][1:3])
            if n.op == "MaxPool":
                v = F.max_pool2d(pad_nchw(inp, k, s, a["padding"], -math.inf), k, s)
            else:  # TF's SAME average excludes the padding from each window's count
                k = (min(k[0], inp.shape[2]), min(k[1], inp.shape[3])) if a["padding"] == "SAME" else k
                ones = torch.ones_like(inp[:, :1])
                num = F.avg_pool2d(pad_nchw(inp, k, s, a["padding"], 0.0), k, s, divisor_override=1)
                den = F.avg_pool2d(pad_nchw(ones, k, s, a["padding"], 0.0), k, s, divisor_override=1)
                v = num / den
            v = v.permute(0, 2, 3, 1)
        elif n.op == "ConcatV2":
            axis = int(get(n.inputs[-1]))
            v = torch.cat([get(i) for i in n.inputs[:-1]], dim=axis)
        elif n.op == "Reshape":
            shape = [int(s) for s in get(n.inputs[1]).reshape(-1)]
            inp = get(n.inputs[0])
            if len(shape) > 1 and shape[0] == 1:  # frozen graphs fix the batch at 1; keep the real one
                shape[0] = inp.shape[0]
            v = inp.reshape(shape)
        elif n.op == "MatMul":
            b = get(n.inputs[1])
            v = get(n.inputs[0]) @ (b.T if a.get("transpose_b") else b)
        elif n.op in ("FusedBatchNorm", "FusedBatchNormV3"):
            xin = get(n.inputs[0])
            scale, offset, mean, var = (get(i).reshape(-1) for i in n.inputs[1:5])
            v = (xin - mean) / torch.sqrt(var + float(a.get("epsilon", 1e-3))) * scale + offset
        elif n.op == "Square":
            v = get(n.inputs[0]) ** 2
        elif n.op == "Sum":
            axes = [int(i) for i in get(n.inputs[1]).reshape(-1)]
            v = get(n.inputs[0]).sum(dim=axes, keepdim=bool(a.get("keep_dims")))
        elif n.op == "Maximum":
            v = torch.maximum(get(n.inputs[0]), get(n.inputs[1]))
        elif n.op == "Rsqrt":
            v = torch.rsqrt(get(n.inputs[0]))
        else:
            raise InputError(f"graph node {n.name}: operation {n.op} is not supported")
        vals[n.name] = v
        last = n.name
        if output is not None and n.name == output:
            break
    return get(output or last).numpy()
