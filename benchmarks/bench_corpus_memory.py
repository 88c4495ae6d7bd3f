"""Peak memory of a corpus build at two corpus sizes: it must not grow with the corpus.

Three domains of synthetic text (seeded pseudo-words, ~2 KB documents in ``.jsonl`` files,
three vocabularies so the domains differ) are built twice, at ``--megabytes`` and at ``--scale``
times that, each in a fresh child process that reports its peak resident set size (``VmHWM``)
and its resident size after the imports, before building (``baseline``). The tokenizer is trained
on the same number of characters in both builds (``tokenizer_chars_per_domain``), so the builds
differ only in how much text is read, split, tokenised and packed. Printed: both peaks, the
growth of peak over baseline, and the ratio large / small of the peaks (1.0 = flat); for
comparison, the corpus's text and token ids held in memory at once would add roughly the
"in memory" column.

    .venv/bin/python benchmarks/bench_corpus_memory.py [--megabytes 16] [--scale 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOMAINS = ("code", "science", "stories")
DOC_CHARS = 2000


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def write_sources(directory: Path, megabytes: float) -> dict[str, str]:
    """``megabytes`` of text per domain as jsonl files; domain -> source spec."""
    sources = {}
    for number, domain in enumerate(DOMAINS):
        rng = np.random.default_rng(number)
        words = ["".join(rng.choice(list("abcdefghij"[number:] + "klmnop"), size=n)) for n in
                 rng.integers(2, 9, size=4000)]  # fmt: skip
        path = directory / f"{domain}.jsonl"
        written = 0
        with open(path, "w", encoding="utf-8") as handle:
            index = 0
            while written < megabytes * 1e6:
                picks = rng.integers(0, len(words), size=DOC_CHARS // 5)
                text = f"{index} " + " ".join(words[i] for i in picks)
                handle.write(json.dumps({"text": text}) + "\n")
                written += len(text)
                index += 1
        sources[domain] = str(path)
    return sources


def build(sources: dict[str, str], out: Path) -> dict[str, float]:
    """Build the corpus (in this process); peak and baseline RSS in MiB, and the counts."""
    from crossdiff.corpus import CorpusConfig, build_corpus

    baseline = _status_kib("VmRSS")
    config = CorpusConfig(
        sources=sources, vocab_size=1024, tokenizer_chars_per_domain=2_000_000,
        context_length=256,
    )  # fmt: skip
    start = time.perf_counter()
    stats = build_corpus(config, out)
    seconds = time.perf_counter() - start
    tokens = sum(sum(d["tokens"].values()) for d in stats["domains"].values())
    characters = sum(sum(d["characters"].values()) for d in stats["domains"].values())
    return {
        "peak_mib": _status_kib("VmHWM") / 1024,
        "baseline_mib": baseline / 1024,
        "tokens": tokens,
        "characters": characters,
        "seconds": seconds,
    }


def measure(megabytes: float, scratch: Path) -> dict[str, float]:
    """Sources of ``megabytes`` per domain, built by a fresh child process."""
    directory = scratch / f"{megabytes:g}MB"
    directory.mkdir()
    sources = write_sources(directory, megabytes)
    child = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(sources), str(directory / "corpus")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=16, help="text per domain, small build")
    parser.add_argument("--scale", type=float, default=4, help="large build = scale x small")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(build(json.loads(args.child[0]), Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory() as scratch:
        rows = [measure(args.megabytes, Path(scratch)),
                measure(args.megabytes * args.scale, Path(scratch))]  # fmt: skip
    print(f"{'text':>10} {'tokens':>12} {'in memory':>10} {'baseline':>9} {'peak':>9} "
          f"{'growth':>8} {'seconds':>8}")  # fmt: skip
    for row in rows:
        in_memory = (row["characters"] + 4 * row["tokens"]) / 2**20
        print(
            f"{row['characters'] / 1e6:>8.1f}MB {row['tokens']:>12,} {in_memory:>8.0f}MB "
            f"{row['baseline_mib']:>7.0f}MB {row['peak_mib']:>7.0f}MB "
            f"{row['peak_mib'] - row['baseline_mib']:>6.0f}MB {row['seconds']:>8.1f}"
        )
    small, large = rows
    print(f"corpus size ratio (characters): {large['characters'] / small['characters']:.2f}")
    print(f"peak RSS ratio large / small:   {large['peak_mib'] / small['peak_mib']:.3f}")
    growth = (large["peak_mib"] - large["baseline_mib"]) / (
        small["peak_mib"] - small["baseline_mib"]
    )
    print(f"peak-over-baseline ratio:       {growth:.3f}")


if __name__ == "__main__":
    main()
