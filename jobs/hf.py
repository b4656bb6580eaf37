"""To and from Hugging Face Llama checkpoints: config.json + model.safetensors (+ tokenizer).

Our parameter names are LlamaForCausalLM's (see jobs/model.py), so both directions copy tensors
as they are: no renaming, no dtype change, so load(export(m)) is bit for bit. A directory may be
a local path or any fsspec URI (s3://, gs://, memory://).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save

from lmforge.jobs.storage import filesystem, join, write_atomic
from lmforge.operator.api.architecture import Architecture
from lmforge.operator.api.sizing import parameter_shapes

CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
SCORE = "score.weight"
"""A reward model's head (LlamaForSequenceClassification, one label) instead of lm_head."""
SCORER_LABELS = {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
EOS = "<|eos|>"
TOKENIZER, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
LINEAGE = "lineage.json"
"""{"trainingData": [{"uri", "kind"}, ...]}: everything the model was trained on, its own run's
data first, then its base model's, so an Evaluation can measure what its tasks share with it."""


def export(
    model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor],
    arch: Architecture,
    out_dir: str | Path,
    tokenizer_json_path: str | Path | None = None,
    endpoint_url: str | None = None,
    training_data: list[dict[str, str]] | None = None,
) -> str:
    """Write a LlamaForCausalLM checkpoint directory; returns its location.

    Tensors are written in the dtype they have (cast the model first for a bf16 export). For a
    sharded (FSDP) model pass a full state dict gathered on one rank. When embeddings are tied,
    lm_head.weight is left out, as Hugging Face does.
    """
    arch = arch.resolved()
    state = model_or_state_dict
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    _check_tying(tensors, arch)
    if arch.tied_embeddings:
        tensors.pop("lm_head.weight", None)
    check_shapes({k: tuple(v.shape) for k, v in tensors.items()}, arch, "state dict")
    dtype = str(tensors["model.embed_tokens.weight"].dtype).removeprefix("torch.")
    config = llama_config(arch, dtype)
    if SCORE in tensors:  # a reward model (jobs/model.Scorer)
        config |= {"architectures": ["LlamaForSequenceClassification"], **SCORER_LABELS}
        if tokenizer_json_path is not None:  # the score is read before the padding (<|eos|>)
            config["pad_token_id"] = _token_id(tokenizer_json_path, EOS)
    out = str(out_dir).rstrip("/")
    fs, root = filesystem(out, endpoint_url)
    write_atomic(fs, join(root, CONFIG), json.dumps(config, indent=2).encode())
    write_atomic(fs, join(root, WEIGHTS), save(tensors, metadata={"format": "pt"}))
    if training_data is not None:
        lineage = {"trainingData": training_data}
        write_atomic(fs, join(root, LINEAGE), json.dumps(lineage, indent=2).encode())
    if tokenizer_json_path is not None:
        write_atomic(fs, join(root, TOKENIZER), Path(tokenizer_json_path).read_bytes())
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": arch.context_length,
        }
        write_atomic(
            fs, join(root, TOKENIZER_CONFIG), json.dumps(tokenizer_config, indent=2).encode()
        )
    return out


def training_data(model_uri: str, endpoint_url: str | None = None) -> list[dict[str, str]]:
    """What the model at model_uri was trained on (LINEAGE); empty when it does not say (a
    model from elsewhere)."""
    fs, root = filesystem(model_uri, endpoint_url)
    try:
        return json.loads(fs.cat_file(join(root, LINEAGE)))["trainingData"]
    except FileNotFoundError:
        return []


def llama_config(arch: Architecture, dtype: str = "float32") -> dict:
    """config.json for LlamaForCausalLM with this shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.d_model,
        "intermediate_size": arch.ffn_size,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.kv_heads,
        "head_dim": arch.d_model // arch.heads,
        "hidden_act": "silu",
        "max_position_embeddings": arch.context_length,
        "rms_norm_eps": arch.norm_eps,
        # transformers 5 reads rope_parameters; 4.x and most other readers read rope_theta.
        "rope_theta": arch.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": arch.rope_theta},
        "tie_word_embeddings": arch.tied_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        # Special tokens belong to the tokenizer; unset here rather than Llama's defaults (1, 2).
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


class Checkpoint:
    """A checkpoint directory opened without reading its weights: its Architecture, and where
    each tensor lies in its safetensors files (model.safetensors, or the shards that
    model.safetensors.index.json lists).

    A safetensors file is an 8-byte header length, a JSON header giving each tensor's dtype,
    shape and byte range, then the tensors row-major. So any range of a tensor's first dimension
    is one byte range of the file, and `read` fetches just that: a rank that holds an FSDP shard
    reads its own rows from object storage and nothing else. (safetensors' own reader opens only
    local files, which would mean copying the whole model to every node first.)

    A reward model (LlamaForSequenceClassification) has `score.weight` and no lm_head; with tied
    embeddings the names leave out lm_head.weight, whose rows are the embedding's.
    """

    def __init__(self, uri: str | Path, endpoint_url: str | None = None):
        uri = str(uri).rstrip("/")
        self.fs, self.root = fs, root = filesystem(uri, endpoint_url)
        config = _read_json(fs, root, CONFIG)
        if config is None:
            raise ValueError(f"{uri}/{CONFIG}: not found; a Hugging Face model directory has one")
        self.architecture = arch = architecture_from_config(config, f"{uri}/{CONFIG}")
        where = f"{uri}/{WEIGHTS}"
        self.tensors: dict[str, tuple[str, torch.dtype, tuple[int, ...], int]] = {}
        """name -> (path, dtype, shape, offset of its first byte)"""
        index = _read_json(fs, root, INDEX)
        files = [WEIGHTS]
        if index is not None:
            where = f"{uri}/{INDEX}"
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            files = sorted(set((weight_map or {}).values()))
            if not files:
                raise ValueError(f"{where}: weight_map is missing or empty")
        for name in files:
            self.tensors |= _header(fs, join(root, name), f"{uri}/{name}")
        if arch.tied_embeddings or SCORE in self.tensors:
            self.tensors.pop("lm_head.weight", None)  # some exporters write the tied copy
        check_shapes({k: shape for k, (_, _, shape, _) in self.tensors.items()}, arch, where)

    def file(self, name: str) -> bytes:
        """Another file of the directory (tokenizer.json, ...), whole."""
        return self.fs.cat_file(join(self.root, name))

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor `name`, or rows [start, stop) of its first dimension."""
        return self._fetch([(name, rows)])[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor, for Transformer or Scorer with strict=True: a tied lm_head.weight is
        the embedding tensor itself."""
        names = list(self.tensors)
        state = dict(zip(names, self._fetch([(name, None) for name in names]), strict=True))
        if self.architecture.tied_embeddings and SCORE not in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        return state

    def _fetch(self, wanted: list[tuple[str, tuple[int, int] | None]]) -> list[torch.Tensor]:
        """The tensors (or rows) asked for, as byte ranges fetched together (concurrently on
        object storage)."""
        paths, starts, ends, shapes, dtypes = [], [], [], [], []
        for name, rows in wanted:
            if name == "lm_head.weight" and name not in self.tensors:
                name = "model.embed_tokens.weight"  # tied
            path, dtype, shape, offset = self.tensors[name]
            start, stop = rows or (0, shape[0])
            row = math.prod(shape[1:]) * dtype.itemsize
            paths.append(path)
            starts.append(offset + start * row)
            ends.append(offset + stop * row)
            shapes.append((stop - start, *shape[1:]))
            dtypes.append(dtype)
        data = self.fs.cat_ranges(paths, starts, ends)
        return [
            torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
            if raw
            else torch.empty(shape, dtype=dtype)
            for raw, shape, dtype in zip(data, shapes, dtypes, strict=True)
        ]


def load(
    uri: str | Path, endpoint_url: str | None = None
) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """A checkpoint directory's Architecture and every tensor (Checkpoint.state_dict)."""
    checkpoint = Checkpoint(uri, endpoint_url)
    return checkpoint.architecture, checkpoint.state_dict()


def architecture_from_config(config: dict, where: str) -> Architecture:
    """The Architecture a Llama config.json describes; ValueError for anything we can't run."""
    if not isinstance(config, dict) or config.get("model_type") != "llama":
        got = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{where}: model_type is {got!r}; only 'llama' checkpoints can be loaded")
    supported = (
        ("hidden_act", config.get("hidden_act", "silu"), "silu"),
        ("attention_bias", bool(config.get("attention_bias")), False),
        ("mlp_bias", bool(config.get("mlp_bias")), False),
        ("rope_parameters.rope_type", _rope_type(config), "default"),  # no RoPE scaling
    )
    for field, got, want in supported:
        if got != want:
            raise ValueError(f"{where}: {field} is {got!r}; this model supports only {want!r}")
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    for field in (*required, "vocab_size", "max_position_embeddings"):
        if not isinstance(config.get(field), int):
            raise ValueError(f"{where}: {field} is missing or not an integer")
    heads, d_model = config["num_attention_heads"], config["hidden_size"]
    if config.get("head_dim") not in (None, d_model // heads):
        raise ValueError(f"{where}: head_dim {config['head_dim']} is not hidden_size / heads")
    rope = config.get("rope_parameters") or {}
    fields = dict(
        layers=config["num_hidden_layers"],
        d_model=d_model,
        heads=heads,
        kv_heads=config.get("num_key_value_heads") or heads,
        ffn_size=config["intermediate_size"],
        context_length=config["max_position_embeddings"],
        vocab_size=config["vocab_size"],
        rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        norm_eps=config.get("rms_norm_eps", 1e-6),  # LlamaConfig's default
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
    )
    try:
        return Architecture(**fields).resolved()
    except ValueError as e:
        raise ValueError(f"{where}: the shape it describes is not valid here: {e}") from e


def check_shapes(shapes: dict[str, tuple[int, ...]], arch: Architecture, where: str) -> None:
    """Every parameter present with the shape arch implies, and nothing else; a reward model
    has the score head instead of lm_head."""
    expected = parameter_shapes(arch)
    if SCORE in shapes:
        expected.pop("lm_head.weight", None)
        expected[SCORE] = (1, arch.d_model)
    for name, shape in expected.items():
        if name not in shapes:
            raise ValueError(f"{where}: tensor {name} is missing")
        if tuple(shapes[name]) != shape:
            raise ValueError(
                f"{where}: tensor {name} has shape {tuple(shapes[name])}, but the config"
                f" implies {shape}"
            )
    unexpected = sorted(set(shapes) - set(expected))
    if unexpected:
        raise ValueError(f"{where}: unexpected tensors {', '.join(unexpected[:5])}")


def _check_tying(tensors: dict[str, torch.Tensor], arch: Architecture) -> None:
    """Refuse to drop a trained lm_head, or to write a tied one twice."""
    lm_head, embedding = tensors.get("lm_head.weight"), tensors.get("model.embed_tokens.weight")
    if lm_head is None or embedding is None:
        return
    tied = lm_head.data_ptr() == embedding.data_ptr() or torch.equal(lm_head, embedding)
    if tied != arch.tied_embeddings:
        raise ValueError(
            f"state dict: lm_head.weight {'is' if tied else 'is not'} the embedding, but the"
            f" architecture has tiedEmbeddings {str(arch.tied_embeddings).lower()}: export with"
            " the architecture the model was built with"
        )


def _token_id(tokenizer_json_path: str | Path, token: str) -> int | None:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json_path)).token_to_id(token)


def _rope_type(config: dict) -> str:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return rope.get("rope_type", rope.get("type", "default"))


DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32}  # fmt: skip
"""The safetensors dtypes a checkpoint's tensors may have."""


def _header(fs, path: str, where: str) -> dict[str, tuple[str, torch.dtype, tuple[int, ...], int]]:
    """Each tensor of a safetensors file: (path, dtype, shape, offset of its first byte)."""
    if not fs.exists(path):
        raise ValueError(f"{where}: weights not found; export them as safetensors")
    with fs.open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(length)) if 2 <= length <= 100 << 20 else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: not a safetensors file (its header does not parse)")
    header.pop("__metadata__", None)
    tensors = {}
    for name, entry in header.items():
        if entry.get("dtype") not in DTYPES:
            raise ValueError(f"{where}: tensor {name} has dtype {entry.get('dtype')!r}, not one of"
                             f" {', '.join(DTYPES)}")  # fmt: skip
        tensors[name] = (path, DTYPES[entry["dtype"]], tuple(entry["shape"]),
                         8 + length + entry["data_offsets"][0])  # fmt: skip
    return tensors


def _read(fs, root: str, name: str) -> bytes | None:
    path = join(root, name)
    return fs.cat_file(path) if fs.exists(path) else None


def _read_json(fs, root: str, name: str):
    """The parsed file, or None when there is none."""
    raw = _read(fs, root, name)
    try:
        return None if raw is None else json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{fs.unstrip_protocol(join(root, name))}: not valid JSON ({e})") from e
