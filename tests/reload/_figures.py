"""Where the reload tests put their figures: GRACEFUL_RELOAD_FIGURES, one JSON line a run."""

from __future__ import annotations

import json
import os


def record_figures(figures: dict[str, object]) -> None:
    """Append ``figures`` as one JSON line to GRACEFUL_RELOAD_FIGURES, when it names a file."""
    path = os.environ.get("GRACEFUL_RELOAD_FIGURES")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(figures, sort_keys=True) + "\n")
