"""The server's config, torch-free: a Deployment's spec with its model resolved."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.operator.api.base import Model
from lmforge.operator.api.deployment import Limits, RateLimit, Safety


class ServeConfig(Model):
    model_uri: str
    """A Hugging Face Llama directory (what training exports), local or on object storage."""
    served_model_name: str
    """The `model` clients ask for."""
    endpoint_url: str | None = None
    slots: int = Field(default=16, ge=1, le=4096)
    """Sequences decoded together at most (the KV cache's rows); more requests wait in a queue."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    runtime: Literal["native", "onnx"] = "native"
    """native: PyTorch; onnx: the model exported to an ONNX graph (with past keys and values),
    run by onnxruntime (fp32)."""
    quantization: Literal["none", "int8"] = "none"
    """int8: dynamic quantization of every linear layer (int8 weights, activations quantized per
    batch at run time; fbgemm/onednn kernels on CPU)."""
    api_keys_dir: str | None = None
    """A folder with one file per API key (a mounted Secret): file name = key name, content =
    the key. `<name>.models` (comma-separated) restricts a key to those models. None: open."""
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    limits: Limits = Field(default_factory=Limits)
    safety: Safety = Field(default_factory=Safety)
    feedback_uri: str | None = None
    """Where POST /v1/feedback appends preference rows; None turns the route off."""
    log_prompts: bool = False
    audit_log: str | None = None
    """A file for the audit log (JSON lines); stderr when unset."""

    @model_validator(mode="after")
    def _onnx_is_fp32(self) -> ServeConfig:
        if self.runtime == "onnx" and (self.quantization != "none" or self.dtype != "fp32"):
            raise ValueError(
                "runtime onnx runs the fp32 graph: set quantization none (int8 is the native"
                " runtime's) and dtype fp32"
            )
        return self
