"""Progress bars: tqdm's notebook widget interactively, plain text when run by papermill.

Papermill logs a kernel's text output to the terminal but not its widgets, so
``coin reproduce`` sets ``COIN_TEXT_PROGRESS=1`` for its kernels and every bar in
``coinlib`` then prints as text.
"""

from __future__ import annotations

import os

__all__ = ["tqdm"]

if os.environ.get("COIN_TEXT_PROGRESS"):
    from tqdm.std import tqdm as _text_tqdm

    class tqdm(_text_tqdm):  # noqa: N801 - a drop-in for tqdm
        """Text bars that print a line every 15 s instead of every step."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("mininterval", 15.0)
            super().__init__(*args, **kwargs)
else:
    from tqdm.auto import tqdm
