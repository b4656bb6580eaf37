"""Dataset: collect raw text, clean, deduplicate, filter, tokenize and pack into Arrow shards."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from lmforge.operator.api.base import NAME_PATTERN, URI_PATTERN, Model, Rule
from lmforge.operator.api.common import Status, Workload
from lmforge.operator.api.resource import Column, Resource


class Source(Model):
    """Raw documents: every file matching a URI glob (s3://, file://, anything fsspec reads)."""

    uri: str = Field(pattern=URI_PATTERN)
    """A URI, globs allowed: s3://bucket/raw/**/*.jsonl.gz."""
    format: Literal["text", "jsonl", "parquet", "warc"] = "text"
    """text: one document per file; jsonl: one per line; parquet: one per row; warc: WARC or WET
    files (Common Crawl's), one per HTML response (its main text) or WET conversion record."""
    field: str | None = None
    """The jsonl field or parquet column holding the text ("text" when unset)."""
    compression: Literal["auto", "none", "gzip", "zstd"] = "auto"
    """auto: from the file extension (.gz, .zst)."""

    rules = (
        Rule(
            "!(self.format in ['text', 'warc']) || !has(self.field)",
            "applies to jsonl and parquet sources only",
            ".field",
        ),
    )


class Cleaning(Model):
    """Normalization applied to every document before anything else."""

    unicode_normalization: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_control_characters: bool = True
    whitespace: Literal["keep", "trailing", "collapse"] = "trailing"
    """trailing: strip line ends (keeps code indentation); collapse: runs of spaces to one."""
    boilerplate_patterns: list[str] = Field(default_factory=list, max_length=256)
    """Regular expressions; matching lines are removed (license headers and the like)."""
    min_chars: int = Field(default=64, ge=0)
    max_chars: int = Field(default=1_000_000, ge=1)

    rules = (Rule("self.minChars <= self.maxChars", "must not exceed maxChars", ".minChars"),)


class NearDuplicates(Model):
    """MinHash + LSH over word shingles; one document is kept per cluster."""

    enabled: bool = True
    shingle_size: int = Field(default=5, ge=1, le=32)
    """Words per shingle."""
    permutations: int = Field(default=128, ge=16, le=1024)
    bands: int = Field(default=16, ge=1, le=1024)
    threshold: float = Field(default=0.8, gt=0, le=1)
    """Jaccard similarity of word shingles at or above which two documents are duplicates (LSH
    finds candidates; each is confirmed by the similarity their signatures' sketches estimate)."""

    rules = (
        Rule(
            "self.permutations % self.bands == 0",
            "must divide permutations evenly (rows per band = permutations / bands)",
            ".bands",
        ),
    )


class Deduplication(Model):
    """Across the whole corpus, not per shard."""

    exact: bool = True
    """Drop documents whose normalized content hash was already seen."""
    near: NearDuplicates = Field(default_factory=NearDuplicates)


class QualityFilter(Model):
    """Gopher/C4-style heuristics; a document failing any is removed."""

    enabled: bool = True
    min_words: int = Field(default=50, ge=0)
    max_words: int = Field(default=100_000, ge=1)
    min_mean_word_length: float = Field(default=2.0, ge=0)
    max_mean_word_length: float = Field(default=12.0, gt=0)
    max_symbol_ratio: float = Field(default=0.1, ge=0)
    """Hash and ellipsis symbols per word."""
    min_alpha_word_ratio: float = Field(default=0.5, ge=0, le=1)
    """Words that contain a letter, as a fraction of all words."""
    max_duplicate_line_ratio: float = Field(default=0.3, ge=0, le=1)
    max_bullet_line_ratio: float = Field(default=0.9, ge=0, le=1)

    rules = (
        Rule("self.minWords <= self.maxWords", "must not exceed maxWords", ".minWords"),
        Rule(
            "self.minMeanWordLength <= self.maxMeanWordLength",
            "must not exceed maxMeanWordLength",
            ".minMeanWordLength",
        ),
    )


PiiType = Literal["email", "phone", "ipAddress", "creditCard", "cloudKey", "privateKey"]


class PiiFilter(Model):
    """Personal data and secrets: redacted in place (counted by type) or the document dropped."""

    enabled: bool = True
    action: Literal["redact", "drop"] = "redact"
    types: list[PiiType] = Field(
        default=["email", "phone", "ipAddress", "creditCard", "cloudKey", "privateKey"],
        max_length=6,
    )


class Blocklist(Model):
    """Harmful or unwanted content: documents matching a word or pattern are dropped."""

    words: list[str] = Field(default_factory=list, max_length=100_000)
    """Whole words, case-insensitive."""
    patterns: list[str] = Field(default_factory=list, max_length=1024)
    """Regular expressions."""
    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """A file of more words, one per line."""


class UrlFilter(Model):
    """By the domain of a document's URL (warc sources); a domain includes its subdomains."""

    blocked_domains: list[str] = Field(default_factory=list, max_length=1_000_000)
    blocked_domains_uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """A file of more blocked domains, one per line (a list such as UT1's adult category)."""
    allowed_domains: list[str] = Field(default_factory=list, max_length=1_000_000)
    """When set, only documents from these domains are kept."""


class LanguageFilter(Model):
    """Language identification with py3langid, whose model ships inside the package; the audit
    counts the kept documents by language whenever it is enabled."""

    enabled: bool = False
    languages: list[str] = Field(default_factory=list, max_length=200)
    """ISO 639-1 codes to keep (en, de, ...); empty keeps every language."""
    min_score: float = Field(default=0.5, ge=0, le=1)
    """A document whose most likely language scores below this is removed."""


class Classifier(Model):
    """A fastText model (a .bin from fastText's train_supervised) that scores every document for
    one label, as FineWeb-Edu (quality) and NeMo-Curator (quality, toxicity, domain) use them."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    """The audit counts what it removes as classifier.<name>."""
    uri: str = Field(pattern=URI_PATTERN)
    """The model file, local or in object storage; each worker reads it once."""
    label: str = Field(min_length=1, max_length=256)
    """One of the model's labels, with or without fastText's __label__ prefix."""
    threshold: float = Field(ge=0, le=1)
    """A probability of the label."""
    action: Literal["keep", "remove"] = "keep"
    """keep: only documents scoring at least threshold are kept (quality, domain); remove:
    documents scoring at least threshold are removed (toxicity)."""


class Decontamination(Model):
    """Documents that share a word n-gram with evaluation data are removed, so that evaluations
    measure what the model learned rather than what it saw (GPT-3's 13-gram overlap)."""

    uris: list[Annotated[str, Field(pattern=URI_PATTERN)]] = Field(
        default_factory=list, max_length=256
    )
    """Evaluation data: jsonl rows (the text of every string field of a row is one example, so
    an Evaluation's task files work as they are) or plain text files (a file is one example).
    Globs allowed."""
    ngram: int = Field(default=13, ge=4, le=64)
    """Words per n-gram: lower-cased runs of letters and digits."""


class Filters(Model):
    urls: UrlFilter = Field(default_factory=UrlFilter)
    language: LanguageFilter = Field(default_factory=LanguageFilter)
    quality: QualityFilter = Field(default_factory=QualityFilter)
    pii: PiiFilter = Field(default_factory=PiiFilter)
    blocklist: Blocklist = Field(default_factory=Blocklist)
    classifiers: list[Classifier] = Field(default_factory=list, max_length=16)
    """Run in order after the heuristics and the blocklist; a document any of them removes is
    removed."""
    decontamination: Decontamination = Field(default_factory=Decontamination)

    rules = (
        Rule(
            "self.classifiers.all(c, self.classifiers.exists_one(d, d.name == c.name))",
            "classifier names must be unique",
            ".classifiers",
        ),
    )


class TokenizerTraining(Model):
    """A byte-level BPE trained on the cleaned corpus (Hugging Face tokenizers)."""

    vocab_size: int = Field(default=8192, ge=256, le=1_048_576)
    min_frequency: int = Field(default=2, ge=1)
    special_tokens: list[str] = Field(
        default=["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"],
        max_length=1024,
    )
    """BOS, EOS and PAD first, then chat markers."""


class Tokenizer(Model):
    """Train a tokenizer, or load a tokenizer.json: exactly one of train or uri."""

    train: TokenizerTraining | None = None
    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """A tokenizer.json, local or in object storage."""

    rules = (Rule("has(self.train) != has(self.uri)", "set exactly one of train or uri"),)


class Packing(Model):
    """Fixed-length sequences with EOS between documents, in size-bounded Arrow IPC shards."""

    sequence_length: int = Field(default=1024, ge=16, le=131072)
    """Tokens per sequence; at least the model's contextLength is typical."""
    shard_size_mib: int = Field(default=256, ge=1, le=4096, alias="shardSizeMiB")


class Split(Model):
    """Documents (not sequences) go to train or validation, deterministically by seed."""

    validation_fraction: float = Field(default=0.01, ge=0, lt=1)
    seed: int = Field(default=0, ge=0)


class Engine(Model):
    type: Literal["local", "ray"] = "local"
    """local: processes on the pod or machine; ray: Ray tasks (on KubeRay in Kubernetes)."""
    workers: int | None = Field(default=None, ge=1, le=4096)
    """Parallel workers; every CPU when unset."""
    worker_memory_mib: int = Field(default=1024, ge=256, le=1 << 20, alias="workerMemoryMiB")
    """What each worker may use at most; the job sizes its batches, buffers and duplicate
    partitions from it (docs/data.md, "Memory"). Give the pod workers x this, plus 512 MiB."""


class Output(Model):
    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """Where shards, manifest.json and audit.json go; <storage.uri>/dataset/<name> when unset."""


class DatasetSpec(Workload):
    sources: list[Source] = Field(min_length=1, max_length=256)
    cleaning: Cleaning = Field(default_factory=Cleaning)
    deduplication: Deduplication = Field(default_factory=Deduplication)
    filters: Filters = Field(default_factory=Filters)
    tokenizer: Tokenizer = Field(default_factory=lambda: Tokenizer(train=TokenizerTraining()))
    packing: Packing = Field(default_factory=Packing)
    split: Split = Field(default_factory=Split)
    engine: Engine = Field(default_factory=Engine)
    output: Output = Field(default_factory=Output)


class DatasetStatus(Status):
    documents_in: int | None = None
    documents_out: int | None = None
    tokens: int | None = None
    shards: int | None = None
    manifest_uri: str | None = None
    tokenizer_digest: str | None = None


class Dataset(Resource):
    """Raw text in, then cleaned, deduplicated, filtered, tokenized and packed into Arrow shards."""

    kind: Literal["Dataset"] = "Dataset"
    spec: DatasetSpec
    status: DatasetStatus | None = None

    plural: ClassVar = "datasets"
    short_names: ClassVar = ("lmds",)
    columns: ClassVar = (
        Column("Phase", ".status.phase"),
        Column("Documents", ".status.documentsOut", "integer"),
        Column("Tokens", ".status.tokens", "integer"),
        Column("Shards", ".status.shards", "integer", priority=1),
    )
