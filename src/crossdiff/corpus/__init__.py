"""The corpus stage: documents of several domains, a tokenizer, and packed one-domain sequences."""

from crossdiff.corpus.build import (
    PackedSequences,
    build_corpus,
    load_documents,
    load_sequences,
)
from crossdiff.corpus.config import CorpusConfig
from crossdiff.corpus.sources import CorpusSource, Document
from crossdiff.corpus.tokenizer import load_tokenizer

__all__ = [
    "CorpusConfig",
    "CorpusSource",
    "Document",
    "PackedSequences",
    "build_corpus",
    "load_documents",
    "load_sequences",
    "load_tokenizer",
]
