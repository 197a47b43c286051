"""What every overhead benchmark does with the Markdown section it produced."""

from __future__ import annotations

from pathlib import Path


def publish(section: str, path: Path, write: bool) -> int:
    """Print ``section``; with ``write``, also store it at ``path`` (for ``RESULTS.md``).

    Returns:
      0, the script's exit status.
    """
    print(section)
    if write:
        path.write_text(section)
    return 0
