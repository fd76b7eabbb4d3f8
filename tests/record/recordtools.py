"""Helpers for the record/watch/refresh unit tests: domain XML with or without a record, and
records of guests booted on the bundled profiles' hosts."""

from __future__ import annotations

from psci_hook.domainxml import QEMU_NAMESPACE
from psci_hook.engine import GuestState
from psci_hook.profile import HostProfile, bundled_profiles, load_profile
from psci_hook.record import GuestRecord, Origin, record_xml

NOW = "2026-11-30T12:00:00Z"
EARLIER = "2026-11-29T08:00:00Z"
UUID_A = "0e2e0000-0000-4000-8000-00000000000a"
UUID_B = "0e2e0000-0000-4000-8000-00000000000b"


def profile(name: str) -> HostProfile:
    return load_profile(bundled_profiles()[name])


def domain_xml(record: GuestRecord | None = None, domain_type: str = "kvm", pmu: bool = True,
               arch: str = "aarch64", qemu_args: tuple[str, ...] = ()) -> bytes:
    """A domain XML; ``qemu_args``: the <qemu:commandline> arguments libvirt appends to QEMU's
    command line."""
    metadata = f"\n  <metadata>\n    {record_xml(record, '    ')}\n  </metadata>" if record else ""
    features = "" if pmu else "\n  <features><pmu state='off'/></features>"
    commandline = "".join(f"<qemu:arg value='{arg}'/>" for arg in qemu_args)
    if commandline:
        commandline = f"\n  <qemu:commandline>{commandline}</qemu:commandline>"
    namespace = f" xmlns:qemu='{QEMU_NAMESPACE}'" if commandline else ""
    return f"""<domain type='{domain_type}'{namespace}>
  <name>vm1</name>
  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>{metadata}
  <memory unit='KiB'>65536</memory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='{arch}' machine='virt-7.2'>hvm</type>
  </os>{features}
  <cpu mode='host-passthrough' check='none'/>
  <devices>
    <emulator>/usr/bin/qemu-system-aarch64</emulator>
  </devices>{commandline}
</domain>
""".encode()


def booted(profile_name: str, host: str, uuid: str = "", event: str = "booted",
           time: str = EARLIER) -> GuestRecord:
    state = GuestState.booted_on(profile(profile_name))
    return GuestRecord(state, Origin(event, host, profile(profile_name).kernel_release, time,
                                     uuid))
