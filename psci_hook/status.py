"""Named exit statuses of every psci-hook command and of the hook itself.

One table, so the README, the man page, the hook and the tests agree on what a number means.
Each number means one thing; the one exception is 1, which is a veto for the hook and for
`check` (libvirt reports it) and "something failed" for `doctor`, `config --check` and
`where`, as scripts expect of a checking tool.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0  # allowed / done / no disagreement
    # hook, check: the migration would fail; where: no host can take the guest.
    VETO = 1
    # doctor: a check failed; config --check: the file has mistakes (the same number as VETO).
    PROBLEMS_FOUND = 1
    BAD_INPUT = 2  # usage error or malformed input (argv, XML, JSON, configuration)
    INTERNAL_ERROR = 3  # hook: a bug or unreadable state, and the policy says on_error = veto
    TIMEOUT = 4  # hook: the run exceeded its time bound, and the policy says on_error = veto
    NOT_ALL_RECORDED = 5  # record: some domains could not be recorded (each line says why)
    DISAGREEMENT = 6  # conformance: the engine and this host's kernel disagree on a value
    CONFLICT = 7  # install: a file psci-hook did not write is in the way (--force replaces it)
    # The KVM probe, rehearsal and conformance check (psci_hook.kvm).
    NO_KVM = 10  # /dev/kvm does not exist
    KVM_PERMISSION = 11  # /dev/kvm exists but cannot be opened
    NOT_AARCH64 = 12  # this machine is not arm64: the arm64 ioctls must not be sent
    KVM_NOT_INITIALISED = 13  # ENOEXEC: the kernel refused the vCPU initialisation order
    KVM_NO_REG_IOCTLS = 14  # the kernel lacks KVM_GET_REG_LIST / ONE_REG for arm64
    KVM_ERROR = 15  # any other ioctl failure
    # Commands that talk to libvirt (refresh, record, watch); never the hook.
    LIBVIRT_UNAVAILABLE = 20  # python3-libvirt missing or the daemon cannot be reached
