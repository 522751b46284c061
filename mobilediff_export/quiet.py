"""Keep converter chatter off the user's terminal, and give it back when it matters.

litert-torch, TensorFlow's C++ logging (absl), ai_edge_quantizer, coremltools and
torch.export print progress, warnings and log lines straight to the process's file
descriptors 1 and 2, below Python, where ``contextlib.redirect_stderr`` cannot reach.
``native_output_captured`` points both descriptors at a temporary file while converters
run and hands the caller a stream on the *original* stderr for its own progress. On
success the chatter is dropped; when the block raises, its last lines are written to the
original stderr first, so a failure's cause is never lost. ``MOBILEDIFF_VERBOSE=1``
turns the capture off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import TextIO

TAIL_LINES = 40


def verbose() -> bool:
    return os.environ.get("MOBILEDIFF_VERBOSE", "") not in ("", "0")


@contextlib.contextmanager
def native_output_captured(enabled: bool = True) -> Iterator[TextIO]:
    """Capture fds 1 and 2 for the block; yields a text stream on the original stderr."""
    if not enabled or verbose():
        yield sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding="utf-8")
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        failed = False
        try:
            yield console
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            if failed:
                _replay_tail(log, console)
            console.close()


def _replay_tail(log, console: TextIO) -> None:
    log.seek(0)
    lines = log.read().decode("utf-8", "replace").splitlines()
    if not lines:
        return
    shown = lines[-TAIL_LINES:]
    console.write(f"--- last {len(shown)} of {len(lines)} lines the converter tools printed ---\n")
    console.write("\n".join(shown) + "\n---\n")
    console.flush()
