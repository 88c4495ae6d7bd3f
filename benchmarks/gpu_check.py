"""Check crossdiff on this machine's GPU in one command: device tests, a run end to end, speeds.

1. the device tests: every test parametrised over ``tests/devices.py``'s devices, run with
   pytest for the checked device (the CUDA cases skip on a machine without one);
2. a small run end to end (corpus -> models -> harvest -> crosscoder -> analyses -> report)
   through ``crossdiff run``, in bf16 (models trained under bf16 autocast, a bf16 store, a
   bf16 crosscoder);
3. throughput, each measured after a warm-up: model training (tokens/s, the MoE model),
   harvest (tokens/s through both models of the run), crosscoder training (activations/s:
   token pairs per second through a crosscoder step).

Prints one table (and writes it as JSON with ``--json``); the exit status is 1 if a device
test or the run failed.

    python benchmarks/gpu_check.py                      # on a GPU machine (CUDA, bf16)
    python benchmarks/gpu_check.py --device cpu         # the same checks on the CPU
    python benchmarks/gpu_check.py --device cpu --size tiny --skip-tests   # seconds, no pytest
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

SIZES: dict[str, dict[str, Any]] = {
    # seconds on a CPU: the test's setting
    "tiny": {
        "corpus": {"max_documents_per_domain": 30, "vocab_size": 512,
                   "tokenizer_chars_per_domain": 100_000, "context_length": 32},
        "model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_mlp": 64, "num_experts": 4},
        "model_tokens": 8_192, "model_batch": 16,
        "harvest": {"train_sequences": 128, "validation_sequences": 64, "batch_sequences": 16,
                    "shard_sequences": 64},
        "crosscoder": {"expansion": 4, "k": 8, "n_shared": 16, "steps": 60, "batch_size": 256,
                       "dead_tokens": 5_000, "ce_sequences": 4, "lr": 3e-3},
        "analyses": ["feature_classes", "density", "routing"],
        "bench_model": {"n_layers": 2, "d_model": 64, "n_heads": 2, "d_mlp": 128,
                        "num_experts": 4},
        "bench_batch": 16, "bench_steps": 4,
        "bench_crosscoder": {"d_model": 64, "dict_size": 1024, "k": 8, "batch": 512},
    },
    # a few minutes on one GPU: the quickstart's models and a paper-width crosscoder step
    "small": {
        "corpus": {"max_documents_per_domain": 400, "vocab_size": 4096,
                   "tokenizer_chars_per_domain": 1_000_000, "context_length": 128},
        "model": {"n_layers": 2, "d_model": 128, "n_heads": 4, "d_mlp": 512, "num_experts": 8},
        "model_tokens": 400_000, "model_batch": 32,
        "harvest": {"train_sequences": 1024, "validation_sequences": 256, "batch_sequences": 64,
                    "shard_sequences": 256},
        "crosscoder": {"expansion": 8, "k": 16, "n_shared": 64, "steps": 400,
                       "batch_size": 1024, "dead_tokens": 100_000, "ce_sequences": 16},
        "analyses": ["corpus_stats", "feature_classes", "density", "dashboards", "routing",
                     "expert_alignment", "early_decoding"],
        "bench_model": {"n_layers": 5, "d_model": 512, "n_heads": 8, "d_mlp": 2048,
                        "num_experts": 8},
        "bench_batch": 32, "bench_steps": 20,
        "bench_crosscoder": {"d_model": 512, "dict_size": 16384, "k": 64, "batch": 4096},
    },
}  # fmt: skip
"""The settings of each ``--size``."""


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--size", default=None, choices=sorted(SIZES),
                   help="small on CUDA, tiny on the CPU by default")  # fmt: skip
    p.add_argument("--dtype", default=None, choices=["bf16", "fp32"],
                   help="bf16 on CUDA, fp32 on the CPU by default")  # fmt: skip
    p.add_argument("--out", type=Path, help="keep the run here (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--skip-tests", action="store_true", help="no device tests")
    p.add_argument("--skip-run", action="store_true", help="no end-to-end run nor throughput")
    args = p.parse_args(argv)
    args.size = args.size or ("small" if args.device == "cuda" else "tiny")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    return args


# ----------------------------------------------------------------------------- 1. device tests


def device_test_files() -> list[Path]:
    """Test modules parametrised over ``tests/devices.py``'s devices."""
    return sorted(
        path
        for path in (REPO / "tests").rglob("test_*.py")
        if "tests.devices import" in path.read_text()
    )


def run_device_tests(device: str) -> dict[str, Any]:
    """pytest on the device tests' ``device`` cases; counts of passed/failed/skipped. On CUDA
    a skipped case fails the check (it would mean the GPU was not used)."""
    files = [str(p.relative_to(REPO)) for p in device_test_files()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    chosen = "cuda" if device == "cuda" else "cpu and not cuda"  # the cases' parameter ids
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", chosen, *files]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    counts = {
        kind: int(n)
        for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", proc.stdout)
    }
    ok = proc.returncode == 0 and counts.get("passed", 0) > 0
    ok = ok and (device == "cpu" or not counts.get("skipped"))  # a skipped CUDA case: no GPU use
    return {
        "ok": ok,
        "files": len(files),
        "counts": counts,
        "seconds": time.perf_counter() - start,
        "output": "" if ok else proc.stdout[-3000:] + proc.stderr[-2000:],
    }


# ----------------------------------------------------------------------------- 2. the run


def run_config(size: dict[str, Any], dtype: str, device: str) -> str:
    """The TOML of the end-to-end run."""
    bf16 = dtype == "bf16"
    model = ", ".join(f"{k} = {v}" for k, v in size["model"].items() if k != "num_experts")
    experts = size["model"]["num_experts"]
    train = (
        f"tokens = {size['model_tokens']}, batch_size = {size['model_batch']}, "
        f'eval_every = 0, checkpoint_every = 0, precision = "{"bf16" if bf16 else "fp32"}"'
    )
    lines = [
        f'name = "gpu check ({device}, {dtype})"',
        f"analyses = {json.dumps(size['analyses'])}",
    ]
    lines += ["[corpus]", *(f"{k} = {v}" for k, v in size["corpus"].items())]
    lines += ["[models.dense]", 'arch = "dense"', 'preset = "tiny"']
    lines += [f"model = {{ {model} }}", f"train = {{ {train} }}"]
    lines += ["[models.moe]", 'arch = "moe"', 'preset = "tiny"']
    lines += [f"model = {{ {model}, num_experts = {experts} }}", f"train = {{ {train} }}"]
    lines += ["[harvest]", f'site = "{size["model"]["n_layers"] - 1}.mlp_out"']
    lines += [f'dtype = "{dtype}"', *(f"{k} = {v}" for k, v in size["harvest"].items())]
    lines += ["[crosscoder]", *(f"{k} = {v}" for k, v in size["crosscoder"].items())]
    lines += [f'dtype = "{"bfloat16" if bf16 else "float32"}"', f'device = "{device}"']
    lines += ["progress = false"]
    return "\n".join(lines) + "\n"


def end_to_end(size: dict[str, Any], dtype: str, device: str, run_dir: Path) -> dict[str, Any]:
    """``crossdiff run`` on :func:`run_config`; its summary's headline numbers."""
    from crossdiff.cli import main as crossdiff

    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "gpu_check.toml"
    config.write_text(run_config(size, dtype, device))
    start = time.perf_counter()
    status = crossdiff(["run", str(config), "--out", str(run_dir / "run")])
    seconds = time.perf_counter() - start
    summary_path = run_dir / "run" / "report" / "summary.json"
    if status != 0 or not summary_path.is_file():
        return {"ok": False, "seconds": seconds, "status": status}
    summary = json.loads(summary_path.read_text())
    crosscoder = summary["crosscoder"]
    weights = run_dir / "run" / "crosscoder" / "crosscoder" / "cfg.json"
    saved_dtype = json.loads(weights.read_text())["dtype"]
    return {
        "ok": True,
        "seconds": seconds,
        "fve_pooled": crosscoder["fve"]["pooled"],
        "l0": crosscoder["l0"],
        "dead_fraction": crosscoder["dead_fraction"],
        "crosscoder_dtype": saved_dtype,
        "analyses": sorted(p.name for p in (run_dir / "run" / "analyses").iterdir() if p.is_dir()),
    }


# ----------------------------------------------------------------------------- 3. throughput


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def model_training_speed(size: dict[str, Any], dtype: str, device: str, run: Path) -> dict:
    """Tokens/s of the MoE model's training steps (timed between the first and last step)."""
    from crossdiff.corpus import load_sequences
    from crossdiff.models.config import preset
    from crossdiff.models.train import train

    sequences = load_sequences(run / "corpus")
    saved = json.loads((run / "models" / "moe" / "cfg.json").read_text())
    vocab = int(saved["model"]["vocab_size"])
    n_ctx = sequences["train"].input_ids.shape[1]
    batch, steps = size["bench_batch"], size["bench_steps"]
    train_overrides = {
        "tokens": batch * n_ctx * steps, "batch_size": batch, "eval_every": 0,
        "checkpoint_every": 0, "final_eval_sequences_per_domain": 1, "warmup_steps": 1,
        "precision": "bf16" if dtype == "bf16" else "fp32", "log_every": 10**9,
    }  # fmt: skip
    model_cfg, train_cfg = preset("tiny", "moe", vocab, n_ctx, size["bench_model"], train_overrides)
    stamps: list[float] = []

    def on_step(step: int) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        train(model_cfg, train_cfg, sequences, tmp, on_step=on_step, log=None)
    tokens = batch * n_ctx * (len(stamps) - 1)
    d, layers = model_cfg.d_model, model_cfg.n_layers
    return {
        "value": tokens / (stamps[-1] - stamps[0]),
        "unit": "tokens/s",
        "setting": f"MoE {layers}x{d}, {model_cfg.num_experts} experts, batch {batch}x{n_ctx}",
    }


def harvest_speed(size: dict[str, Any], dtype: str, device: str, run: Path) -> dict:
    """Tokens/s of harvesting the run's two models, placed on ``device``, into a new store
    (forward passes + writes)."""
    from crossdiff.adapters import load_adapter
    from crossdiff.corpus import load_sequences
    from crossdiff.plugins import create_plugin_manager
    from crossdiff.store import StoreConfig, harvest

    manager = create_plugin_manager()
    adapters = {m: load_adapter(str(run / "models" / m), manager, device) for m in ("dense", "moe")}
    sequences = load_sequences(run / "corpus")["train"]
    spec = size["harvest"]
    n = min(len(sequences.input_ids), spec["train_sequences"])
    config = StoreConfig(
        dtype=dtype, max_sequences=n, batch_sequences=spec["batch_sequences"],
        shard_sequences=spec["shard_sequences"],
    )  # fmt: skip
    site = f"{size['model']['n_layers'] - 1}.mlp_out"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        info = harvest(adapters, [site], sequences, Path(tmp) / "store", config)
        seconds = time.perf_counter() - start
    return {
        "value": info.tokens / seconds,
        "unit": "tokens/s",
        "setting": f"2 models on {device} at {site}, {n} sequences, {dtype} store",
    }


def crosscoder_speed(size: dict[str, Any], dtype: str, device: str) -> dict:
    """Token pairs/s through full crosscoder training steps (forward, BatchTopK, aux-k on a
    quarter of the latents marked dead, backward, Adam) on Gaussian activations."""
    import torch

    from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig
    from crossdiff.crosscoder.distributed import Collectives
    from crossdiff.crosscoder.train import TrainState, make_optimizer, train_step

    spec = size["bench_crosscoder"]
    d, L, B = spec["d_model"], spec["dict_size"], spec["batch"]
    cfg = CrosscoderConfig(
        models=("A", "B"), d_models=(d, d), dict_size=L, k=spec["k"], n_shared=L // 32,
        dtype="bfloat16" if dtype == "bf16" else "float32",
    )  # fmt: skip
    model = Crosscoder(cfg).to(device)
    tcfg = TrainConfig(steps=10**6, warmup_steps=1, dead_tokens=1)
    optimizer = make_optimizer(model, tcfg)
    gen = torch.Generator(device=device).manual_seed(0)
    batch = {m: torch.randn(B, d, generator=gen, device=device) for m in cfg.models}
    model.fit_input_scales_(batch)
    dead = torch.full((L,), 0, dtype=torch.long, device=device)
    dead[: L // 4] = 1  # a quarter dead: aux-k runs
    state = TrainState(tokens_since_fired=dead)
    coll = Collectives()
    times = []
    for _ in range(size["bench_steps"] + 1):
        state.tokens_since_fired[: L // 4] = 1
        state.tokens_since_fired[L // 4 :] = 0
        sync(device)
        start = time.perf_counter()
        train_step(model, optimizer, batch, state, tcfg, coll)
        sync(device)
        times.append(time.perf_counter() - start)
    step = sum(times[1:]) / len(times[1:])
    return {
        "value": B / step,
        "unit": "activations/s",
        "setting": f"2 x d_model {d}, {L} latents, k {spec['k']}, batch {B}, {cfg.dtype}",
    }


# ----------------------------------------------------------------------------- the table


def table(results: dict[str, Any]) -> str:
    """The printed report."""
    rows = [("check", "result", "")]
    tests = results.get("device_tests")
    if tests is not None:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(tests["counts"].items()))
        rows.append((f"device tests ({results['device']})",
                     ("ok" if tests["ok"] else "FAILED") + f": {counts}",
                     f"{tests['files']} modules, {tests['seconds']:.0f} s"))  # fmt: skip
    run = results.get("run")
    if run is not None:
        detail = (
            f"FVE {run['fve_pooled']:.3f}, L0 {run['l0']:.1f}, {run['crosscoder_dtype']} weights"
            if run["ok"]
            else f"exit status {run.get('status')}"
        )
        verdict = ("ok" if run["ok"] else "FAILED") + f" in {run['seconds']:.0f} s"
        rows.append((f"end to end ({results['device']}, {results['dtype']})", verdict, detail))
    for name, figure in results.get("throughput", {}).items():
        rows.append((name, f"{figure['value']:,.0f} {figure['unit']}", figure["setting"]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    """Run the checks; 0 if every one passed."""
    args = arguments(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the run's "auto" stages stay on the CPU too
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu", file=sys.stderr)
        return 2
    if args.dtype == "bf16" and args.device == "cuda" and not torch.cuda.is_bf16_supported():
        print("gpu_check: this GPU has no bf16; run with --dtype fp32", file=sys.stderr)
        return 2
    size = SIZES[args.size]
    results: dict[str, Any] = {"device": args.device, "dtype": args.dtype, "size": args.size}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name()
    if not args.skip_tests:
        results["device_tests"] = run_device_tests(args.device)
    if not args.skip_run:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.out or Path(tmp)
            results["run"] = end_to_end(size, args.dtype, args.device, work)
            if results["run"]["ok"]:
                run = work / "run"
                results["throughput"] = {
                    "model training": model_training_speed(size, args.dtype, args.device, run),
                    "harvest": harvest_speed(size, args.dtype, args.device, run),
                    "crosscoder training": crosscoder_speed(size, args.dtype, args.device),
                }
    print(table(results))
    tests_ok = results.get("device_tests", {}).get("ok", True)
    run_ok = results.get("run", {}).get("ok", True)
    if not tests_ok:
        print(results["device_tests"]["output"], file=sys.stderr)
    if args.json is not None:
        payload = dict(results)
        if "device_tests" in payload:
            payload["device_tests"] = {
                k: v for k, v in payload["device_tests"].items() if k != "output"
            }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if tests_ok and run_ok else 1


if __name__ == "__main__":
    sys.exit(main())
