"""How the Docker backend names a failed create or start (issue 13): the runtime only when it is the runtime."""

from __future__ import annotations

from emulator.backend.docker import _runtime_unknown, _start_failure

PYTHON_MISSING = ('failed to create shim task: OCI runtime create failed: runc create failed: unable to start '
                  'container process: exec: "python3": executable file not found in $PATH: unknown')
MOUNT_ON_FILE = ('failed to create shim task: OCI runtime create failed: runc create failed: unable to start '
                 'container process: error during container init: error mounting "/tmp/x" to rootfs at '
                 '"/.tle/run": not a directory: unknown')


def test_a_failure_inside_the_image_is_not_the_runtime() -> None:
    assert not _runtime_unknown(PYTHON_MISSING, "runc")
    assert not _runtime_unknown(MOUNT_ON_FILE, "runc")
    assert _start_failure(PYTHON_MISSING) == 'exec: "python3": executable file not found in $PATH'
    assert _start_failure(MOUNT_ON_FILE) == 'error mounting "/tmp/x" to rootfs at "/.tle/run": not a directory'


def test_a_missing_runtime_is_the_runtime() -> None:
    assert _runtime_unknown("Unknown runtime specified runsc", "runsc")
    assert _runtime_unknown('OCI runtime create failed: unable to retrieve OCI runtime error: exec: "runsc": '
                            'executable file not found in $PATH: unknown', "runsc")
