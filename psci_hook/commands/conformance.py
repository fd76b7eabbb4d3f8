"""``psci-hook conformance``: prove the engine's firmware-register rules against this kernel.

For every firmware register (the eight of the catalogue and any other this kernel lists) and
every value the engine reasons about, ask the engine whether this host would accept the value,
then really try it: KVM_SET_ONE_REG on a fresh scratch VM whose vCPU QEMU would have created
(PSCI_0_2). Every disagreement is printed; the exit status is 1 if there is any. An operator
runs it once per kernel to show that the rules hold for their distribution's kernel, backports
included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from psci_hook import engine
from psci_hook import kvm as kvm_mod
from psci_hook import probe as probe_mod
from psci_hook import registers as regs
from psci_hook.environment import Environment
from psci_hook.profile import HostProfile, ProfileError, load_profile
from psci_hook.status import ExitStatus
from psci_hook.vocab import StrEnum

HELP = "check the engine's predictions against real KVM_SET_ONE_REG calls on this host"



class Agreement(StrEnum):
    """The engine's prediction against the kernel's answer, for one value."""

    AGREE = "agree"
    DISAGREE = "disagree"
    UNPREDICTED = "unverified"  # the engine cannot tell offline (FW_UNVERIFIED)


@dataclasses.dataclass(frozen=True)
class Check:
    reg_id: int
    value: int
    predicted: bool | None  # the engine: accepted, refused, or cannot tell
    errno: int  # the kernel: 0 accepted, else the errno of the refusal
    own_value: int | None  # this host's value of the register (None: not listed)

    @property
    def accepted(self) -> bool:
        return self.errno == 0

    @property
    def verdict(self) -> Agreement:
        if self.predicted is None:
            return Agreement.UNPREDICTED
        return Agreement.AGREE if self.predicted == self.accepted else Agreement.DISAGREE

    def kernel_text(self) -> str:
        return "accepted" if self.accepted else f"refused ({kvm_mod.errno_name(self.errno)})"

    def line(self) -> str:
        name = regs.register_name(self.reg_id)
        own = "not listed" if self.own_value is None else regs.value_text(
            self.reg_id, self.own_value)
        predicted = {True: "accepted", False: "refused", None: "unknown"}[self.predicted]
        return (
            f"{self.verdict.upper()}: {name} = 0x{self.value:x} "
            f"({regs.value_text(self.reg_id, self.value)}): engine predicts {predicted}, "
            f"kernel {self.kernel_text()}; this host's value {own}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "register": regs.firmware_name(self.reg_id),
            "id": regs.format_id(self.reg_id),
            "value": self.value,
            "predicted": self.predicted,
            "kernel": "accepted" if self.accepted else kvm_mod.errno_name(self.errno),
            "host_value": self.own_value,
            "verdict": self.verdict,
        }


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print every check as JSON")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="use this profile of this host for the predictions instead of probing it first",
    )


def firmware_ids(profile: HostProfile) -> list[int]:
    """The catalogue's firmware registers plus any other firmware register the host lists."""
    return sorted(set(regs.FW_BY_ID) | set(profile.registers))


def run_checks(kvm: kvm_mod.Kvm, profile: HostProfile, reg_ids: Iterable[int]) -> list[Check]:
    checks = []
    for reg_id in reg_ids:
        for value in engine.candidate_values(reg_id):
            predicted = engine.predict_value(reg_id, value, profile)
            # A fresh VM for every value: PSCI and the bitmaps are stored per VM.
            with kvm.scratch_vcpu(()) as vcpu:
                own = vcpu.try_get_one_reg(reg_id)
                code = vcpu.try_set_one_reg(reg_id, value)
            checks.append(Check(reg_id, value, predicted, code, own))
    return checks


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    try:
        with kvm_mod.Kvm() as kvm:
            if args.profile:
                profile = load_profile(args.profile)
            else:
                profile = HostProfile.from_dict(
                    probe_mod.probe_host(kvm, clock=env.clock, run_dir=env.run_dir)
                )
            checks = run_checks(kvm, profile, firmware_ids(profile))
    except kvm_mod.KvmError as exc:
        env.error(f"conformance: {exc.message}")
        return exc.status
    except ProfileError as exc:
        env.error(f"conformance: {exc}")
        return ExitStatus.BAD_INPUT
    except OSError as exc:
        env.error(f"conformance: {exc.strerror or exc}")
        return ExitStatus.KVM_ERROR

    disagreements = [c for c in checks if c.verdict == Agreement.DISAGREE]
    unverified = [c for c in checks if c.verdict == Agreement.UNPREDICTED]
    registers_checked = len({c.reg_id for c in checks})
    if args.json:
        env.write_out(json.dumps({
            "kernel_release": profile.kernel_release,
            "checks": [c.to_dict() for c in checks],
            "disagreements": len(disagreements),
            "unverified": len(unverified),
        }, indent=1) + "\n")
    else:
        for check in disagreements + unverified:
            env.write_out(check.line() + "\n")
        env.write_out(
            f"conformance: kernel {profile.kernel_release}: {len(checks)} values on "
            f"{registers_checked} firmware registers, {len(disagreements)} disagreement(s), "
            f"{len(unverified)} the engine cannot predict\n"
        )
    return ExitStatus.DISAGREEMENT if disagreements else ExitStatus.OK
