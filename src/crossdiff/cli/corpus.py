"""``crossdiff corpus``: build the three-domain corpus and show its statistics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crossdiff.cli.options import parse_assignments
from crossdiff.errors import ConfigError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``corpus build`` and ``corpus stats``."""
    corpus = commands.add_parser(
        "corpus",
        help="build the three-domain corpus, show its stats",
        description="Build the corpus stage (`crossdiff corpus build`) or show the statistics "
        "of a built one (`crossdiff corpus stats`).",
    )
    corpus.set_defaults(handler=lambda args: _print_help(corpus))
    corpus_commands = corpus.add_subparsers(title="corpus commands", metavar="COMMAND")
    build_cmd = corpus_commands.add_parser(
        "build",
        help="build documents, tokenizer and packed sequences (resumable)",
        description="Build the corpus stage: documents (deduplicated, seeded train/validation "
        "split), a byte-level BPE tokenizer, and packed one-domain sequences.",
    )
    build_cmd.add_argument("--out", required=True, type=Path, help="stage directory to write")
    build_cmd.add_argument(
        "--config", type=Path, help="TOML file of corpus settings (CorpusConfig)"
    )
    build_cmd.add_argument(
        "--domain",
        action="append",
        dest="domains",
        metavar="NAME",
        help="a domain to build (repeat); default: code, science, stories",
    )
    build_cmd.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="DOMAIN=SPEC",
        help="override a domain's text: hf:NAME[:SPLIT[:COLUMN]][?config=C&data_dir=D] "
        "(streamed) or local paths",
    )
    build_cmd.add_argument(
        "--overwrite", action="store_true", help="rebuild a corpus made with other settings"
    )
    build_cmd.add_argument("--seed", type=int, help="seed of the train/validation split")
    build_cmd.add_argument("--val-fraction", type=float, help="share of documents held out")
    build_cmd.add_argument("--vocab-size", type=int, help="BPE vocabulary size to train")
    build_cmd.add_argument(
        "--tokenizer",
        help="use this Hugging Face tokenizer instead of training: hf:NAME or a directory",
    )
    build_cmd.add_argument("--context-length", type=int, help="tokens per packed sequence")
    build_cmd.add_argument("--max-documents-per-domain", type=int, help="cap documents per domain")
    build_cmd.add_argument(
        "--max-characters-per-domain", type=int, help="stop reading a source after this many"
    )
    build_cmd.add_argument(
        "--max-train-tokens-per-domain", type=int, help="cap packed train tokens"
    )
    build_cmd.add_argument(
        "--max-val-tokens-per-domain", type=int, help="cap packed validation tokens"
    )
    build_cmd.set_defaults(handler=build)
    stats_cmd = corpus_commands.add_parser("stats", help="print per-domain documents and tokens")
    stats_cmd.add_argument("path", type=Path, help="a corpus stage directory")
    stats_cmd.add_argument("--json", action="store_true", help="print the stats as JSON")
    stats_cmd.set_defaults(handler=stats)


def _print_help(parser: argparse.ArgumentParser) -> int:
    """``crossdiff corpus`` alone: the group's help (exit status 2, like a missing command)."""
    parser.print_help()
    return 2


def build(args: argparse.Namespace) -> int:
    """Build the corpus stage and print its per-domain counts."""
    from crossdiff.config import from_dict, load_toml
    from crossdiff.corpus import CorpusConfig, build_corpus

    settings = load_toml(args.config) if args.config else {}
    overrides = {
        "domains": args.domains,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "vocab_size": args.vocab_size,
        "tokenizer": args.tokenizer,
        "context_length": args.context_length,
        "max_documents_per_domain": args.max_documents_per_domain,
        "max_characters_per_domain": args.max_characters_per_domain,
        "max_train_tokens_per_domain": args.max_train_tokens_per_domain,
        "max_val_tokens_per_domain": args.max_val_tokens_per_domain,
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if args.source:
        settings["sources"] = {
            **settings.get("sources", {}),
            **parse_assignments(args.source, "--source", "DOMAIN=SPEC"),
        }
        if "domains" not in settings:
            defaults = list(CorpusConfig().domains)
            settings["domains"] = defaults + [d for d in settings["sources"] if d not in defaults]
    config = from_dict(CorpusConfig, settings, "corpus")
    stats = build_corpus(config, args.out, overwrite=args.overwrite)
    print(format_stats(stats))
    return 0


def stats(args: argparse.Namespace) -> int:
    """Print the per-domain counts of a built corpus."""
    from crossdiff.stages import read_manifest

    manifest = read_manifest(args.path)
    if manifest is None or manifest.get("stage") != "corpus":
        raise ConfigError(f"{str(args.path)!r} is not a corpus stage directory (no manifest.json)")
    stats = manifest.get("stats", {})
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    if not manifest.get("complete"):
        print("(build not finished: rerun `crossdiff corpus build` to resume)")
    return 0


def format_stats(stats: dict) -> str:
    """A table of documents and tokens per domain and split."""
    header = (
        f"{'domain':<10} {'docs train':>11} {'docs val':>9} {'tokens train':>13} {'tokens val':>11}"
    )
    lines = [header, "-" * len(header)]
    for domain, row in stats.get("domains", {}).items():
        docs, tokens = row.get("documents", {}), row.get("tokens", {})
        lines.append(
            f"{domain:<10} {docs.get('train', 0):>11,} {docs.get('validation', 0):>9,} "
            f"{tokens.get('train', 0):>13,} {tokens.get('validation', 0):>11,}"
        )
    return "\n".join(lines)
