"""How every entry point ends on an expected failure: one line on stderr and an exit code, not a traceback."""
from __future__ import annotations

import sys

from .config import InputError
from .fsutil import WriteFailed


def run_entry(entry, args, input_error_exit: int = 2, write_failed_advice: str | None = None,
              interrupted: str | None = None) -> int:
    """ENTRY(ARGS)'s exit code. A bad input (InputError) ends it with `error: MESSAGE`, exit INPUT_ERROR_EXIT.
    Only where given (elsewhere these stay tracebacks): a failed write (WriteFailed, a full disk) ends it with
    `error: MESSAGE. WRITE_FAILED_ADVICE`, exit 1; a Ctrl-C with the line INTERRUPTED, exit 130."""
    try:
        return entry(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return input_error_exit
    except WriteFailed as error:
        if write_failed_advice is None:
            raise
        from tqdm import tqdm  # only a failing run needs it: the launchers start without tqdm

        for bar in list(tqdm._instances):  # end a progress bar's line before ours
            bar.close()
        print(f"error: {error}. {write_failed_advice}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return 130
