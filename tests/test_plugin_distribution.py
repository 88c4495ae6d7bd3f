"""The adapter tutorial of docs/plugins.md as its readers run it: the distribution built from the
page's files and installed, the script run from outside it, and ``crossdiff harvest`` through
the installed loader and adapter, every command and file taken verbatim from the page."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crossdiff.plugins import PluginNameCollision, create_plugin_manager

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def doc_file(name: str) -> str:
    """The code block right after ``<!-- file: NAME -->``."""
    match = re.search(
        rf"<!-- file: {re.escape(name)} -->\s*```\w*\n(.*?)```", DOC.read_text(), re.S
    )
    assert match, f"no block for {name!r} in docs/plugins.md"
    return match.group(1)


def doc_example(tag: str) -> str:
    """The code block right after ``<!-- example: TAG -->``."""
    match = re.search(rf"<!-- example: {tag} -->\s*```\w*\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"no example tagged {tag!r} in docs/plugins.md"
    return match.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A working directory holding the tutorial's layout, the distribution pip-installed (no
    network: no build isolation, no dependencies) into a target on PYTHONPATH."""
    work = tmp_path_factory.mktemp("tutorial")
    dist = work / "crossdiff-tinymoe"
    dist.mkdir()
    (dist / "pyproject.toml").write_text(doc_file("crossdiff-tinymoe/pyproject.toml"))
    (dist / "crossdiff_tinymoe.py").write_text(doc_example("tinymoe-adapter"))
    (work / "harvest_tinymoe.py").write_text(doc_example("tinymoe-harvest"))
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(dist)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return work, env


def test_the_installed_plugin_is_listed_with_its_adapter_and_loader(installed) -> None:
    work, env = installed
    result = subprocess.run(
        [sys.executable, "-m", "crossdiff", "plugins", "--json"],
        cwd=work, env=env, capture_output=True, text=True,
    )  # fmt: skip
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["tinymoe"]["provides"] == {
        "model adapter": ["tinymoe"],
        "model loader": ["tinymoe"],
    }
    assert rows["tinymoe"]["origin"].startswith("crossdiff-tinymoe==0.1.0")
    assert str(work / "site") in rows["tinymoe"]["module_path"]


@pytest.mark.slow
def test_the_script_and_the_cli_harvest_through_the_installed_plugin(installed) -> None:
    work, env = installed
    script = subprocess.run(
        [sys.executable, "harvest_tinymoe.py"], cwd=work, env=env, capture_output=True, text=True
    )
    assert script.returncode == 0, script.stderr
    assert "1984" in script.stdout and "{'small': (256, 32), 'wide': (256, 64)}" in script.stdout
    for line in doc_example("tinymoe-cli").strip().splitlines():
        done = subprocess.run(shlex.split(line), cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
    sys.path.insert(0, str(work / "site"))
    try:
        import crossdiff_tinymoe

        from crossdiff.adapters import load_adapter
        from crossdiff.corpus import load_sequences
        from crossdiff.store import load_shard, open_store

        store = open_store(work / "runs/tinymoe/corpus-store")
        assert store.dims == {"small": {"1.mlp_out": 32}, "wide": {"1.mlp_out": 64}}
        assert store.tokens == 64 * 31
        # a stored row is the saved model's MoE output on that corpus sequence
        manager = create_plugin_manager()
        wide = load_adapter(str(work / "runs/tinymoe/wide"), manager)
        assert isinstance(wide.model, crossdiff_tinymoe.TinyMoE)
        shard = load_shard(store.shard_paths()[0])
        sequence = int(shard["sequences"][0])
        ids = load_sequences(work / "runs/tinymoe/corpus")["train"].input_ids[[sequence]]
        expected = wide.capture(torch.from_numpy(ids).long(), ["1.mlp_out"])["1.mlp_out"][0, 1:]
        torch.testing.assert_close(shard["act/wide/1.mlp_out"][:31], expected)
        # in code: the installed module again is a no-op, another object under its name is named
        again = create_plugin_manager([("tinymoe", crossdiff_tinymoe)])
        assert again.pm.get_plugin("tinymoe") is crossdiff_tinymoe and not again.failures
        with pytest.raises(PluginNameCollision, match=r"'tinymoe' is already taken by "
                           r"crossdiff-tinymoe==0\.1\.0"):  # fmt: skip
            create_plugin_manager([("tinymoe", object())])
    finally:
        sys.path.remove(str(work / "site"))
        sys.modules.pop("crossdiff_tinymoe", None)


def doc_commands_after(marker: str) -> list[str]:
    """The commands of the first bash block after ``marker`` in docs/plugins.md (comments cut)."""
    text = DOC.read_text().split(marker, 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_haiku_plugin_installs_from_the_page_and_its_commands_run(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "crossdiff-haiku"
    dist.mkdir()
    (dist / "pyproject.toml").write_text(doc_file("crossdiff-haiku/pyproject.toml"))
    (dist / "crossdiff_haiku.py").write_text(doc_example("haiku-plugin"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(dist)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    commands = doc_commands_after("Then, after `pip install ./crossdiff-haiku`")
    assert [c.split()[:2] for c in commands] == [
        ["crossdiff", "plugins"],
        ["crossdiff", "corpus"],
        ["crossdiff", "analyze"],
    ]
    outputs = []
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "crossdiff", *shlex.split(command)[1:]],
            cwd=tmp_path, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, (command, result.stderr[-2000:])
        outputs.append(result.stdout)
    assert "haiku" in outputs[0] and "crossdiff-haiku==0.1.0" in outputs[0]
    summary = json.loads(
        (tmp_path / "run" / "analyses" / "characters_per_domain" / "summary.json").read_text()
    )
    assert {"haiku", "stories"} <= set(json.dumps(summary).replace('"', " ").split())
