"""Reading a report's inputs: a damaged or missing one is a named warning, never a silent gap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_input(path: Path, what: str, warnings: list[str], required: bool = True) -> Any:
    """The JSON in ``path``, an input of the report; None, with a warning naming the file in
    ``warnings``, if it is damaged (or missing, where ``required``)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            warnings.append(
                f"{what} is missing ({str(path)!r}): its part of the report is left out"
            )
    except (OSError, ValueError) as error:
        warnings.append(
            f"{what} is damaged ({str(path)!r}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'unreadable'}): its part of the "
            "report is left out; redo the stage that wrote it"
        )
    return None
