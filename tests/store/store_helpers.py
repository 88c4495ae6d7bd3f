"""Tiny models, a tiny adapter and synthetic sequences for the store tests.

Also runnable as a script (``python -m tests.store.store_helpers OUT [--delay S]``) so a test can
harvest in a subprocess and kill it.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdiff.adapters import ModelAdapter, Site
from crossdiff.corpus import PackedSequences

VOCAB = 512
DOMAINS = ("code", "science", "stories")


def tiny_transformer(d_model: int, moe: bool = False, seed: int = 0, n_layers: int = 2) -> Any:
    """A small random HookedTransformer, dense or native MoE (4 experts, top-2, gated)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    extra = {"num_experts": 4, "experts_per_token": 2, "gated_mlp": True} if moe else {}
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=64,
        d_head=8,
        n_heads=d_model // 8,
        d_mlp=2 * d_model,
        d_vocab=VOCAB,
        act_fn="gelu",
        seed=seed,
        **extra,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TransformerBridge is suggested
        model = HookedTransformer(cfg)
    model.eval()
    return model


class TinyAdapter(ModelAdapter):
    """The adapter contract over a HookedTransformer, with knobs to misbehave on purpose.

    ``delay`` sleeps in every capture; ``fail_on_call`` raises on that capture call (0-based);
    ``corrupt_on_call`` puts a NaN (or ``corrupt_value``) into that call's activations.
    ``seen`` records every token batch the adapter received.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        delay: float = 0.0,
        fail_on_call: int | None = None,
        corrupt_on_call: int | None = None,
        corrupt_value: float = float("nan"),
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.delay = delay
        self.fail_on_call = fail_on_call
        self.corrupt_on_call = corrupt_on_call
        self.corrupt_value = corrupt_value
        self.calls = 0
        self.seen: list[torch.Tensor] = []

    def sites(self) -> list[Site]:
        """``L.mlp_out`` and ``L.resid_post`` per block."""
        d = self.model.cfg.d_model
        return [
            Site(f"{layer}.{kind}", f"blocks.{layer}.hook_{kind}", layer, d)
            for layer in range(self.model.cfg.n_layers)
            for kind in ("mlp_out", "resid_post")
        ]

    @property
    def vocab_size(self) -> int:
        """``d_vocab``."""
        return self.model.cfg.d_vocab

    def capture(self, tokens: torch.Tensor, sites: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run the blocks up to the last site needed and return each site's activations."""
        call, self.calls = self.calls, self.calls + 1
        self.seen.append(tokens.clone())
        if self.delay:
            time.sleep(self.delay)
        if call == self.fail_on_call:
            raise RuntimeError(f"injected failure on capture call {call}")
        wanted = [self.site(name) for name in sites]
        _, cache = self.model.run_with_cache(
            tokens,
            names_filter=[s.native for s in wanted],
            stop_at_layer=max(s.layer for s in wanted) + 1,
        )
        out = {s.name: cache[s.native].clone() for s in wanted}
        if call == self.corrupt_on_call:
            for acts in out.values():
                acts[1, 3, 0] = self.corrupt_value
        return out

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, P, V]``."""
        return self.model(tokens)

    def logits_with_replacement(
        self, tokens: torch.Tensor, site: str, replace: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Logits with ``site`` replaced."""
        hook = (self.site(site).native, lambda act, hook: replace(act))
        return self.model.run_with_hooks(tokens, fwd_hooks=[hook])

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm then unembedding."""
        return self.model.unembed(self.model.ln_final(hidden[None]))[0]


def make_sequences(n: int = 48, context: int = 16, seed: int = 0) -> PackedSequences:
    """``n`` random sequences of ``context`` tokens, domains cycling through three names."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (n, context), dtype=np.int32)
    domains = np.asarray([DOMAINS[i % 3] for i in range(n)], dtype=str)
    return PackedSequences(ids, domains)


class VocabTokenizer:
    """Just enough of a tokenizer to be compared: ``get_vocab``."""

    def __init__(self, shift: int = 0) -> None:
        self.vocab = {f"tok{i}": (i + shift) % VOCAB for i in range(VOCAB)}

    def get_vocab(self) -> dict[str, int]:
        """Token -> id."""
        return dict(self.vocab)


def pair(delay: float = 0.0) -> dict[str, TinyAdapter]:
    """The test pair: a dense model (d 32) and a native MoE (d 48), seeded."""
    return {
        "dense": TinyAdapter(tiny_transformer(32, seed=1), delay=delay),
        "moe": TinyAdapter(tiny_transformer(48, moe=True, seed=2), delay=delay),
    }


def main() -> None:
    """Harvest the test pair into OUT (used by the kill-and-resume and torchrun tests)."""
    from crossdiff.store import StoreConfig, harvest

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (sums' order)")
    parser.add_argument("--pid-dir", type=Path, help="write this process's pid to DIR/rank<R>")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.pid_dir is not None:  # so a test can kill one rank of a torchrun harvest
        args.pid_dir.mkdir(parents=True, exist_ok=True)
        (args.pid_dir / f"rank{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    config = StoreConfig(batch_sequences=4, shard_sequences=8)
    harvest(pair(args.delay), ["0.mlp_out", "1.resid_post"], make_sequences(), args.out, config)


if __name__ == "__main__":
    main()
