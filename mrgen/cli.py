"""What the command-line entry points share: an error in the user's input is one line, not a traceback.

Every check of user input in this package raises a ``ValueError`` (or a subclass: ``ConfigError``,
``IndexValidationError``, ``VolumeError``, ...) or a ``FileNotFoundError`` (``ModelFolderError``, ...) whose
message names the file, entry or key and the fix. ``MRGEN_TRACEBACK=1`` shows the traceback as well.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")
USER_ERRORS = (ValueError, FileNotFoundError)


def exit_on_user_error(run: Callable[[], T]) -> T:
    """``run()``; a user error ends the program with its message and exit code 2."""
    try:
        return run()
    except USER_ERRORS as err:
        if os.environ.get("MRGEN_TRACEBACK"):
            raise
        print(f"error: {err}\n(if this looks like a bug rather than your input: MRGEN_TRACEBACK=1 shows where it was "
              f"raised)", file=sys.stderr)
        sys.exit(2)
