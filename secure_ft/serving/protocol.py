"""The Open Inference Protocol (KServe v2 / Triton REST) messages this server speaks, as pydantic models.

Field names and nesting follow the protocol's JSON schemas, so KServe and Triton clients work
unchanged. The model takes one ``BYTES`` input named ``text`` of shape ``[n]`` (or ``[n, 1]``)
and answers two outputs: ``label`` (``BYTES``, ``[n]``) and ``probabilities`` (``FP32``,
``[n, classes]``, row-major). Errors are ``{"error": "..."}`` as the protocol prescribes.
Only the JSON encoding is accepted (not Triton's binary-tensor extension).
"""

from __future__ import annotations

import math
from typing import Any

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
    data: list[Any]


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
    data: list[Any]


class InferenceResponse(_Message):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class ProtocolError(ValueError):
    """A request that does not fit the model's declared input; answered 422 with this message."""


def model_metadata(name: str, num_classes: int) -> ModelMetadata:
    """The declared input and outputs (-1: any number of texts)."""
    return ModelMetadata(
        name=name, platform=PLATFORM,
        inputs=[MetadataTensor(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[MetadataTensor(name=LABEL_OUTPUT, datatype="BYTES", shape=[-1]),
                 MetadataTensor(name=PROBABILITIES_OUTPUT, datatype="FP32", shape=[-1, num_classes])],
    )


def texts_of(request: InferenceRequest) -> list[Any]:
    """The request's texts, flattened from the one ``BYTES`` input; not yet checked to be strings.

    Raises
    ------
    ProtocolError
        Not exactly one input, a wrong name, datatype or shape, or data that does not fill the shape.
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
    data = _flatten(tensor.data, levels=len(shape))
    if len(data) != math.prod(shape):
        raise ProtocolError(f"input {INPUT_NAME!r} has shape {shape} but {len(data)} data element(s)")
    if request.outputs is not None:
        unknown = [out.name for out in request.outputs if out.name not in (LABEL_OUTPUT, PROBABILITIES_OUTPUT)]
        if unknown:
            raise ProtocolError(f"unknown output {unknown[0]!r}; this model has {LABEL_OUTPUT!r} and "
                                f"{PROBABILITIES_OUTPUT!r}")
    return data


def _flatten(data: list[Any], levels: int) -> list[Any]:
    """Row-major flattening of the nested-list form the protocol also allows, at most `levels` deep.

    Deeper lists stay as items (and are refused as non-strings), so nesting costs no recursion.
    """
    for _ in range(levels - 1):
        data = [part for item in data for part in (item if isinstance(item, list) else [item])]
    return data


def inference_response(model_name: str, request: InferenceRequest, labels: list[str],
                       probabilities: list[list[float]]) -> InferenceResponse:
    """The outputs the request asked for (all by default), in the protocol's flat row-major form."""
    wanted = [out.name for out in request.outputs] if request.outputs else [LABEL_OUTPUT, PROBABILITIES_OUTPUT]
    classes = len(probabilities[0]) if probabilities else 0
    tensors = {
        LABEL_OUTPUT: ResponseOutput(name=LABEL_OUTPUT, datatype="BYTES", shape=[len(labels)], data=labels),
        PROBABILITIES_OUTPUT: ResponseOutput(name=PROBABILITIES_OUTPUT, datatype="FP32",
                                             shape=[len(probabilities), classes],
                                             data=[value for row in probabilities for value in row]),
    }
    return InferenceResponse(model_name=model_name, id=request.id, outputs=[tensors[name] for name in wanted])
