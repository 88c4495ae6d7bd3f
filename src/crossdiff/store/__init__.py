"""The paired activation store: the same tokens through every model, sharded on disk.

``harvest`` writes a store (resumable), ``StoreReader`` yields shuffled training batches from
it, and ``StreamingSource`` yields the same batches straight from the models with no disk.
"""

from crossdiff.store.alignment import store_alignments
from crossdiff.store.checks import NonFiniteActivationError, tokenizer_fingerprint
from crossdiff.store.config import StoreConfig
from crossdiff.store.format import (
    FORMAT_VERSION,
    StoreInfo,
    StoreVersionError,
    open_store,
    store_fingerprint,
)
from crossdiff.store.harvest import harvest, sequence_order
from crossdiff.store.reader import StoreReader, load_shard
from crossdiff.store.streaming import StreamingSource

__all__ = [
    "FORMAT_VERSION",
    "NonFiniteActivationError",
    "StoreConfig",
    "StoreInfo",
    "StoreReader",
    "StoreVersionError",
    "StreamingSource",
    "harvest",
    "load_shard",
    "open_store",
    "sequence_order",
    "store_alignments",
    "store_fingerprint",
    "tokenizer_fingerprint",
]
