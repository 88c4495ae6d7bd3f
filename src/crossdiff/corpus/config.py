"""The corpus stage's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crossdiff.corpus.packing import check_context_length
from crossdiff.errors import ConfigError

DEFAULT_DOMAINS = ("code", "science", "stories")
NEW_FIELDS = {"max_characters_per_domain": None}
"""Settings added after the first corpora were built, with their defaults."""


@dataclass(frozen=True)
class CorpusConfig:
    """How the corpus, its tokenizer and its packed sequences are built."""

    domains: tuple[str, ...] = DEFAULT_DOMAINS
    """Domains to build; each needs a corpus source (plugin or ``sources`` entry)."""
    sources: dict[str, str] = field(default_factory=dict)
    """Per-domain override: ``hf:NAME[:SPLIT[:COLUMN]]`` or comma-separated local paths."""
    seed: int = 0
    """Seed of the document-level train/validation split."""
    val_fraction: float = 0.05
    """Share of each domain's documents held out for validation."""
    max_documents_per_domain: int | None = None
    """Keep at most this many documents per domain (after de-duplication); None keeps all."""
    max_characters_per_domain: int | None = None
    """Stop reading a domain's source once its kept documents hold this many characters (a
    budget for large or streamed hub datasets); None reads it all."""
    vocab_size: int = 8192
    """Size of the byte-level BPE vocabulary trained on the corpus."""
    tokenizer_chars_per_domain: int = 4_000_000
    """Characters of each domain's training text used to train the tokenizer."""
    tokenizer: str | None = None
    """An existing Hugging Face tokenizer to use instead of training one: ``hf:NAME`` (a hub
    name such as ``hf:gpt2``, or a local tokenizer directory), or a plain directory or name.
    ``vocab_size`` and ``tokenizer_chars_per_domain`` then do not apply."""
    context_length: int = 128
    """Tokens per packed sequence; each sequence comes from one domain."""
    max_train_tokens_per_domain: int | None = None
    """Pack at most this many training tokens per domain; None packs all."""
    max_val_tokens_per_domain: int | None = None
    """Pack at most this many validation tokens per domain; None packs all."""

    def __post_init__(self) -> None:
        check_context_length(self.context_length)
        if not self.domains:
            raise ConfigError("domains is empty: expected at least one domain name")
        if len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"domains {list(self.domains)} repeats a name")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction {self.val_fraction!r} must lie strictly in (0, 1)")
        for name in (
            "max_documents_per_domain",
            "max_characters_per_domain",
            "max_train_tokens_per_domain",
            "max_val_tokens_per_domain",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} {value!r} must be a positive integer or None")
        extra = set(self.sources) - set(self.domains)
        if extra:
            raise ConfigError(
                f"sources given for domains not in domains {list(self.domains)}: {sorted(extra)}"
            )

    def record(self) -> dict[str, Any]:
        """The settings as the corpus stage records them (fields added later left out while at
        their default, so a corpus built before them is still up to date)."""
        from crossdiff.config import compact_record, to_dict

        return compact_record(to_dict(self), NEW_FIELDS)
