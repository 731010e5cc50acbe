"""``tether … | head``: when the reader goes away, the CLI exits quietly (no traceback) with 128+SIGPIPE."""

from __future__ import annotations

import signal
import subprocess

from mesh_harness import TETHER


def test_a_closed_pipe_is_a_quiet_exit() -> None:
    process = subprocess.Popen(
        [TETHER, "completion", "bash"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first write
    errors = process.stderr.read()
    assert process.wait(30) == 128 + signal.SIGPIPE
    assert errors == "", errors
