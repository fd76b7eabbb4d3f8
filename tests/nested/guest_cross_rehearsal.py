"""Run inside the nested arm64 guest: rehearse, on this kernel's real KVM, the guest state of a
-cpu host guest booted on every other kernel (tests/data/probed-profiles, same emulated CPU).

For each source profile: its firmware registers, ID registers and cache geometry, restricted to
its migrated list for the -cpu host features, are set with KVM_SET_ONE_REG on a scratch vCPU
with those features, in QEMU's order, skipping what this kernel does not list (QEMU's list
checks decide those), and every refusal is reported (psci_hook.kvm.rehearse_all).
Prints {"destination": label, "sources": {label: [refusal, ...]}}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from psci_hook import kvm as kvm_mod
from psci_hook import registers as regs
from psci_hook.profile import feature_key, load_profile, parse_feature_key

PROFILES = Path(__file__).resolve().parent / "probed-profiles"


def key_name(reg_id: int) -> str:
    if regs.reg_class(reg_id) == regs.RegClass.DEMUX:
        return regs.ccsidr_name(reg_id & 0xFF)
    return regs.firmware_name(reg_id) if regs.is_firmware(reg_id) else regs.register_name(reg_id)


def main() -> int:
    profiles = {p.stem: load_profile(p) for p in sorted(PROFILES.glob("*.json"))}
    with kvm_mod.Kvm() as kvm, kvm.scratch_vcpu(()) as vcpu:
        midr = vcpu.get_one_reg(regs.SYSREG_BY_NAME["MIDR_EL1"])
    release = os.uname().release
    same_cpu = {label: p for label, p in profiles.items()
                if (p.id_registers or {}).get("MIDR_EL1") == midr}
    destination = next((label for label, p in same_cpu.items()
                        if p.kernel_release == release), "?")
    out: dict[str, object] = {"destination": destination, "sources": {}}
    with kvm_mod.Kvm() as kvm:
        for label, source in same_cpu.items():
            key = feature_key(source.values_features())
            values = dict(source.registers)
            for name, value in (source.id_registers or {}).items():
                values[regs.SYSREG_BY_NAME[name]] = value
            for name, value in (source.cache_geometry or {}).items():
                values[regs.cache_geometry_id(name)] = value
            migrated = set((source.cpreg_lists or {}).get(key, ()))
            values = {i: v for i, v in values.items() if i in migrated}
            refusals = kvm_mod.rehearse_all(parse_feature_key(key), values, kvm=kvm,
                                            only_listed=True)
            out["sources"][label] = [  # type: ignore[index]
                {"register": key_name(r.reg_id), "errno": kvm_mod.errno_name(r.errno),
                 "attempted": r.attempted, "own": r.destination_value}
                for r in refusals
            ]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
