"""Run a daemonizing command (``libvirtd -d``) as a child subreaper, and reap its descendants.

Usage: python3 reaper.py COMMAND [ARG...]

The e2e harness starts each host's virtlogd and libvirtd through this. A daemonized process and
the QEMU processes that libvirtd daemonizes are reparented to the nearest subreaper: this
process, instead of PID 1. PID 1 of a container or micro-VM often reaps late, and libvirt waits
for a stopped QEMU's PID to disappear (``virsh destroy``, the end of a migration, ``virsh
save``), so a lingering zombie costs about 1.5 s per guest stop. Here every orphan is reaped as
soon as it exits.

Prints the command's own exit status as one line on stdout (``libvirtd -d`` exits once it has
daemonized), then reaps until no descendant is left and exits 0.
"""

import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    if len(sys.argv) < 2:
        sys.stderr.write("usage: reaper.py COMMAND [ARG...]\n")
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.stderr.write(f"reaper: prctl: {os.strerror(ctypes.get_errno())}\n")
        return 1
    try:
        pid = os.fork()
    except OSError as exc:
        sys.stderr.write(f"reaper: fork: {exc}\n")
        return 1
    if pid == 0:
        try:
            os.execvp(sys.argv[1], sys.argv[1:])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    sys.stdout.write(f"{code}\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(main())
