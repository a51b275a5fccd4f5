"""The Open Inference Protocol (KServe v2 / Triton REST) messages this server speaks, as pydantic models.

Field names and nesting follow the protocol's JSON schemas, so KServe and Triton clients work
unchanged. The model takes one ``BYTES`` input named ``text`` of shape ``[n]`` (or ``[n, 1]``)
and answers two outputs: ``label`` (``BYTES``, the input's shape as sent) and
``probabilities`` (``FP32``, ``[n, classes]``, row-major). Errors are ``{"error": "..."}`` as
the protocol prescribes.

Both encodings are spoken: JSON tensors, and Triton's *binary tensor data extension*
(``Inference-Header-Content-Length``: the JSON header, then the raw tensors; ``BYTES``
elements each as a 4-byte little-endian length and the bytes, ``FP32`` as little-endian
floats). A binary input says ``"parameters": {"binary_data_size": N}`` instead of ``data``;
an output is sent binary when the request asks for it (``"binary_data": true`` on the output,
or ``"binary_data_output": true`` on the request), as ``tritonclient.http`` does by default.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pydantic import BaseModel, ConfigDict, Field

INPUT_NAME = "text"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
PLATFORM = "secure-ft_pytorch"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetadataTensor(_Message):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(_Message):
    name: str
    version: str
    extensions: list[str] = Field(default_factory=list)


class ModelMetadata(_Message):
    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class RequestInput(_Message):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None  # None: the tensor is in the binary part (binary_data_size)


class RequestOutput(_Message):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Message):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Message):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None  # None: sent in the binary part


class InferenceResponse(_Message):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class ProtocolError(ValueError):
    """A request that does not fit the model's declared input; answered 422 with this message."""


def model_metadata(name: str, num_classes: int, version: str) -> ModelMetadata:
    """The declared input and outputs (-1: any number of texts)."""
    return ModelMetadata(
        name=name, versions=[version], platform=PLATFORM,
        inputs=[MetadataTensor(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[MetadataTensor(name=LABEL_OUTPUT, datatype="BYTES", shape=[-1]),
                 MetadataTensor(name=PROBABILITIES_OUTPUT, datatype="FP32", shape=[-1, num_classes])],
    )


def texts_of(request: InferenceRequest, binary: bytes = b"") -> list[Any]:
    """The request's texts, flattened from the one ``BYTES`` input; not yet checked to be strings.

    Parameters
    ----------
    request
        The JSON part of the request.
    binary
        The binary part (binary tensor data extension); empty for a JSON-only request.

    Raises
    ------
    ProtocolError
        Not exactly one input, a wrong name, datatype or shape, data that does not fill the
        shape, or a binary part that does not hold exactly the declared tensors.
    """
    if len(request.inputs) != 1:
        raise ProtocolError(f"expected exactly one input named {INPUT_NAME!r}, got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise ProtocolError(f"unexpected input {tensor.name!r}; this model takes one input named {INPUT_NAME!r}")
    if tensor.datatype != "BYTES":
        raise ProtocolError(f"input {INPUT_NAME!r} must have datatype BYTES, got {tensor.datatype!r}")
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or any(dim < 0 for dim in shape):
        raise ProtocolError(f"input {INPUT_NAME!r} must have shape [n] or [n, 1], got {shape}")
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if tensor.data is not None:
            raise ProtocolError(f"input {INPUT_NAME!r} has both data and binary_data_size; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise ProtocolError(f"input {INPUT_NAME!r} declares binary_data_size {size!r} but the binary part holds "
                                f"{len(binary)} bytes")
        data = _decode_bytes_tensor(binary)
    else:
        if binary:
            raise ProtocolError(f"the request carries {len(binary)} binary bytes but no input declares "
                                "binary_data_size")
        if tensor.data is None:
            raise ProtocolError(f"input {INPUT_NAME!r} has no data")
        data = _flatten(tensor.data, levels=len(shape))
    if len(data) != math.prod(shape):
        raise ProtocolError(f"input {INPUT_NAME!r} has shape {shape} but {len(data)} data element(s)")
    if request.outputs is not None:
        unknown = [out.name for out in request.outputs if out.name not in (LABEL_OUTPUT, PROBABILITIES_OUTPUT)]
        if unknown:
            raise ProtocolError(f"unknown output {unknown[0]!r}; this model has {LABEL_OUTPUT!r} and "
                                f"{PROBABILITIES_OUTPUT!r}")
    return data


def split_binary_body(body: bytes, header_length: str) -> tuple[bytes, bytes]:
    """The JSON header and the binary part of a binary-extension body (``Inference-Header-Content-Length``)."""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {header_length!r} is not a length within the "
                            f"{len(body)}-byte body")
    return body[:int(header_length)], body[int(header_length):]


def _decode_bytes_tensor(binary: bytes) -> list[Any]:
    """Elements of a binary ``BYTES`` tensor: each a 4-byte little-endian length, then that many bytes (UTF-8)."""
    elements, offset = [], 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise ProtocolError(f"binary input {INPUT_NAME!r} ends inside an element's length at byte {offset}")
        length = int.from_bytes(binary[offset:offset + 4], "little")
        start, offset = offset + 4, offset + 4 + length
        if offset > len(binary):
            raise ProtocolError(f"binary input {INPUT_NAME!r}: element {len(elements)} declares {length} bytes, "
                                "more than remain")
        try:
            elements.append(binary[start:offset].decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(f"binary input {INPUT_NAME!r}: element {len(elements)} is not UTF-8 text") from None
    return elements


def _encode_bytes_tensor(values: list[str]) -> bytes:
    parts = []
    for value in values:
        data = value.encode("utf-8")
        parts += [len(data).to_bytes(4, "little"), data]
    return b"".join(parts)


def _flatten(data: list[Any], levels: int) -> list[Any]:
    """Row-major flattening of the nested-list form the protocol also allows, at most `levels` deep.

    Deeper lists stay as items (and are refused as non-strings), so nesting costs no recursion.
    """
    for _ in range(levels - 1):
        data = [part for item in data for part in (item if isinstance(item, list) else [item])]
    return data


def inference_response(model_name: str, model_version: str, request: InferenceRequest, labels: list[str],
                       probabilities: list[list[float]]) -> tuple[InferenceResponse, bytes]:
    """The outputs the request asked for (all by default), and the binary part of those sent binary.

    ``label`` has the input's shape as sent (``[n]`` or ``[n, 1]``); ``probabilities`` is
    ``[n, classes]`` in row-major order.
    """
    wanted = [out.name for out in request.outputs] if request.outputs else [LABEL_OUTPUT, PROBABILITIES_OUTPUT]
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    asked = {out.name: (out.parameters or {}).get("binary_data", binary_default) for out in request.outputs or []}
    classes = len(probabilities[0]) if probabilities else 0
    flat = [value for row in probabilities for value in row]
    tensors = {
        LABEL_OUTPUT: (list(request.inputs[0].shape), "BYTES", labels),
        PROBABILITIES_OUTPUT: ([len(probabilities), classes], "FP32", flat),
    }
    outputs, chunks = [], []
    for name in wanted:
        shape, datatype, data = tensors[name]
        if asked.get(name, binary_default):
            raw = _encode_bytes_tensor(data) if datatype == "BYTES" else np.asarray(data, dtype="<f4").tobytes()
            chunks.append(raw)
            outputs.append(ResponseOutput(name=name, datatype=datatype, shape=shape,
                                          parameters={"binary_data_size": len(raw)}))
        else:
            outputs.append(ResponseOutput(name=name, datatype=datatype, shape=shape, data=data))
    response = InferenceResponse(model_name=model_name, model_version=model_version, id=request.id, outputs=outputs)
    return response, b"".join(chunks)
