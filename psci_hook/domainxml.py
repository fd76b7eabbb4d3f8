"""Reading libvirt domain XML safely, and the few facts psci-hook needs from it.

The XML arrives from libvirt (hook stdin) or from files; it carries secrets, so it is never
logged. Parsing is hardened: a size cap, no DTD, no entity expansion, no network.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from lxml import etree

from psci_hook.engine import RequestedVcpu
from psci_hook.errors import first_line
from psci_hook.profile import AARCH32, FEATURE_ORDER, FeatureSet

MAX_DOMAIN_XML = 8 * 1024 * 1024  # libvirt domain XML is kilobytes; 8 MiB is generous
AARCH32_ARCH = "armv7l"


class DomainXMLError(ValueError):
    """Input that is not a usable domain XML document; the message is one line."""


class Domain(NamedTuple):  # docs/architecture.md#the-hook-path
    root: Any  # the lxml <domain> element
    name: str
    uuid: str
    type: str  # kvm, qemu, hvf ...
    arch: str  # from <os><type arch=...>

    @property
    def is_aarch64(self) -> bool:
        return self.arch == "aarch64"

    @property
    def is_aarch32(self) -> bool:
        """A 32-bit guest, which libvirt runs on an arm64 host's KVM as -cpu host,aarch64=off
        (src/qemu/qemu_command.c qemuBuildCpuCommandLine; tests/qemuxmlconfdata
        aarch64-kvm-32-on-64)."""
        return self.arch == AARCH32_ARCH


def _parser() -> Any:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_blank_text=False, remove_comments=False,
    )


def parse_domain(data: bytes, max_size: int = MAX_DOMAIN_XML) -> Domain:
    if not data.strip():
        raise DomainXMLError("empty domain XML")
    if len(data) > max_size:
        # The hook reads at most max_size + 1 bytes, so no byte count: only that it is over.
        raise DomainXMLError(f"domain XML is over the {max_size}-byte cap")
    head = data.lstrip()[:4].lower()
    if not (head.startswith(b"<") or data.startswith(b"\xef\xbb\xbf")):
        raise DomainXMLError("not XML: it does not start with '<'")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        # libvirt never sends a DTD; refusing one rules out entity expansion and external
        # entities whatever the parser version does.
        raise DomainXMLError("domain XML with a DTD or entity declarations is refused")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise DomainXMLError(f"malformed domain XML: {first_line(exc)}") from None
    except ValueError as exc:  # e.g. unicode strings with an encoding declaration
        raise DomainXMLError(f"malformed domain XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        # The byte check above misses a DTD in an encoding that is not ASCII-compatible for
        # '<' (UTF-7: "+ADw-!DOCTYPE"), which libxml2 decodes; refuse what the parser saw too.
        raise DomainXMLError("domain XML with a DTD or entity declarations is refused")
    if root.tag != "domain":
        raise DomainXMLError(f"root element is <{root.tag}>, not <domain>")
    os_type = root.find("os/type")
    return Domain(
        root=root,
        name=(root.findtext("name") or "").strip(),
        uuid=(root.findtext("uuid") or "").strip(),
        type=root.get("type", ""),
        arch=(os_type.get("arch", "") if os_type is not None else ""),
    )


# libvirt's <cpu><feature name='sveNNN'/> (sve128 ... sve2048) become QEMU's sveNNN=on/off, and
# libvirt then adds sve=on itself (tests/qemuxmlconfdata/aarch64-features-sve.aarch64-latest.args:
# "-cpu host,sve512=on,sve384=off,sve256=on,sve128=on,sve=on").
_SVE_LENGTH_RE = re.compile(r"sve(\d+)")
_ON_POLICIES = ("require", "force")
_OFF_POLICIES = ("disable", "forbid")
# Named CPU models QEMU can run under KVM carry a PMU only (target/arm/cpu64.c: cortex-a53,
# cortex-a57, cortex-a72 set ARM_FEATURE_PMU and no SVE or pointer authentication); "host" and
# "max" (which is "host" under KVM, target/arm/cpu64.c aarch64_max_initfn) take everything.
_HOST_MODELS = ("host", "max")


QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
# The CPU types a -global can name for the property (QEMU applies a global to every object whose
# type is, or derives from, the driver named: qom/object.c object_apply_global_props).
_CPU_GLOBAL_DRIVERS = {"host": ("host-arm-cpu", "aarch64-cpu", "arm-cpu"),
                       "max": ("max-arm-cpu", "aarch64-cpu", "arm-cpu")}
PSCI_PROPERTY = "kvm-psci-version"
# target/arm/kvm.c kvm_set_psci_version: exactly these strings.
PSCI_PROPERTY_VALUES = {"0.1": 0x1, "0.2": 0x2, "1.0": 0x10000, "1.1": 0x10001,
                        "1.2": 0x10002, "1.3": 0x10003}
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


class QemuCpu(NamedTuple):
    """A -cpu option as QEMU parses it: the model and its property=value list, in order, plus
    the -global options that set CPU properties (driver, property, value)."""

    model: str
    properties: tuple[tuple[str, str], ...]
    globals: tuple[tuple[str, str, str], ...] = ()

    def property(self, name: str) -> str | None:
        """The value QEMU ends with: -cpu properties are registered as globals after the
        -global options (vl.c parse_cpu_option, cpu_common_parse_features), so they win,
        and of several the last wins."""
        found = None
        drivers = _CPU_GLOBAL_DRIVERS.get(
            self.model, (f"{self.model}-arm-cpu", "aarch64-cpu", "arm-cpu"))
        for driver, prop, value in self.globals:
            if driver in drivers and prop == name:
                found = value
        for prop, value in self.properties:
            if prop == name:
                found = value
        return found


def parse_cpu_option(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``host,pmu=off,kvm-psci-version=1.1`` -> ("host", (("pmu", "off"), ...))."""
    model, *rest = text.split(",")
    props = []
    for item in rest:
        name, _, value = item.partition("=")
        props.append((name.strip(), value.strip()))
    return model.strip(), tuple(props)


def _parse_global(text: str) -> tuple[str, str, str] | None:
    """-global DRIVER.PROP=VALUE or -global driver=D,property=P,value=V (qemu_global_option)."""
    if "," in text and "driver=" in text:
        fields = dict(item.partition("=")[::2] for item in text.split(","))
        if {"driver", "property", "value"} <= set(fields):
            return fields["driver"], fields["property"], fields["value"]
        return None
    head, eq, value = text.partition("=")
    driver, dot, prop = head.rpartition(".")
    if not (eq and dot):
        return None
    return driver, prop, value


def qemu_cpu_from_argv(argv: Sequence[str], default_model: str = "host") -> QemuCpu:
    """The -cpu and -global options of a QEMU command line (the last -cpu wins, as in vl.c)."""
    model = default_model
    props: tuple[tuple[str, str], ...] = ()
    globals_: list[tuple[str, str, str]] = []
    for i, arg in enumerate(argv[:-1]):
        value = argv[i + 1]
        if arg in ("-cpu", "--cpu"):
            model, props = parse_cpu_option(value)
        elif arg in ("-global", "--global"):
            parsed = _parse_global(value)
            if parsed is not None:
                globals_.append(parsed)
    return QemuCpu(model, props, tuple(globals_))


def commandline_args(domain: Domain) -> list[str]:
    """The domain XML's <qemu:commandline> arguments, which libvirt appends to QEMU's
    command line after its own (src/qemu/qemu_command.c qemuBuildCommandLine)."""
    return [arg.get("value", "") for arg in domain.root.iterfind(
        f"{{{QEMU_NAMESPACE}}}commandline/{{{QEMU_NAMESPACE}}}arg")]


def domain_cpu(domain: Domain, argv: Sequence[str] | None = None) -> QemuCpu | None:
    """The CPU options that override what libvirt derives from <cpu> and <features>: the
    running QEMU's command line when known (``argv``, the ground truth), else the domain
    XML's <qemu:commandline>. None when neither sets anything (libvirt's own -cpu applies)."""
    cpu = qemu_cpu_from_argv(list(argv) if argv is not None else commandline_args(domain),
                             _libvirt_cpu_model(domain))
    if argv is None and not cpu.properties and not cpu.globals and \
            "-cpu" not in commandline_args(domain):
        return None
    return cpu


def _libvirt_cpu_model(domain: Domain) -> str:
    """The -cpu model libvirt gives this domain: a named model in custom mode, else host."""
    cpu = domain.root.find("cpu")
    if cpu is None or cpu.get("mode", "custom") != "custom":
        return "host"
    return (cpu.findtext("model") or "").strip() or "host"


class VcpuRequest(NamedTuple):
    """What a domain asks of its vCPU, before any host: read once from the domain XML (or the
    running QEMU's command line) by vcpu_request, and turned into the vCPU QEMU creates on one
    host by ``on``. Small and hashable: `plan` keeps one per guest instead of its XML tree, and
    the fleet's verdicts are memoised on it.

    * ``host_model``: -cpu host or max (host-passthrough, maximum, or no <cpu>), which take
      every feature the host's KVM has; a named model (cortex-a57 ...) takes a PMU at most;
    * ``turned_on`` / ``turned_off``: the features the XML or -cpu names on (pmu=on, sve=on
      or any sveNNN=on, pauth=on) and off (pmu=off, sve=off, pauth=off), the last word on each;
    * ``sve_lengths``: the SVE vector lengths (bits) named on;
    * ``psci_version``: kvm-psci-version as a PSCI_VERSION value, None where none is set;
    * ``aarch32``: a 32-bit vCPU (aarch64=off).
    """

    host_model: bool = True
    turned_on: FeatureSet = frozenset()
    turned_off: FeatureSet = frozenset()
    sve_lengths: frozenset[int] = frozenset()
    psci_version: int | None = None
    aarch32: bool = False

    def on(self, supported: FeatureSet) -> RequestedVcpu:
        """The vCPU QEMU creates for this request on a host whose KVM supports ``supported``
        (HostProfile.default_features). A feature turned on is in it even where the host
        lacks it: there QEMU refuses to start (the engine finds no register list for it)."""
        offered = supported if self.host_model else supported & {"pmu"}
        features = (offered - self.turned_off) | self.turned_on
        if self.aarch32:
            features = _aarch32_features(features, supported)
        return RequestedVcpu(features=frozenset(features), sve_lengths=self.sve_lengths,
                             psci_version=self.psci_version)


def vcpu_request(domain: Domain, argv: Sequence[str] | None = None) -> VcpuRequest:
    """What this domain asks of its vCPU, from the domain XML or, when known, the running QEMU's
    command line ``argv`` (the ground truth). libvirt's src/qemu/qemu_command.c
    (qemuBuildCpuCommandLine) turns the XML into -cpu options, and QEMU's target/arm/kvm.c and
    cpu64.c turn those into KVM_ARM_VCPU_INIT features:

    * -cpu host (host-passthrough, maximum, or no <cpu>) enables PMU, pointer authentication
      and SVE wherever the host's KVM has them (kvm_arm_pmu_supported, kvm_arm_sve_supported,
      kvm_arm_pauth_supported); a named model in custom mode has a PMU at most;
    * <features><pmu state='off'/> is pmu=off; <cpu><feature policy='disable' name='sve'/>
      (or 'forbid', or name='pauth') is sve=off / pauth=off;
    * a feature the XML turns on (<pmu state='on'/>, policy 'require' or 'force', any sveNNN
      length) is asked for explicitly, and so are the SVE lengths named (QEMU refuses to start
      where KVM does not offer one: target/arm/cpu64.c arm_cpu_sve_finalize);
    * a -cpu in <qemu:commandline> (or in ``argv``) replaces libvirt's -cpu: its model and
      properties (QEMU's names: pmu, sve, sveNNN, pauth, aarch64) decide instead;
    * kvm-psci-version comes from -cpu or a -global naming the CPU's type (QemuCpu.property).
    """
    cpu = domain_cpu(domain, argv)
    psci = None if cpu is None else cpu.property(PSCI_PROPERTY)
    psci_version = None if psci is None else PSCI_PROPERTY_VALUES.get(psci)
    if cpu is not None and (argv is not None or "-cpu" in commandline_args(domain)):
        aarch64 = cpu.property("aarch64")
        return _request(cpu.model in _HOST_MODELS,
                        [(name, _switch(value.lower(), _TRUE, _FALSE))
                         for name, value in cpu.properties],
                        psci_version, aarch64 is not None and aarch64.lower() in _FALSE)
    switches: list[tuple[str, bool | None]] = []
    pmu = domain.root.find("features/pmu")
    if pmu is not None:
        switches.append(("pmu", _switch(pmu.get("state", "on"), ("on",), ("off",))))
    switches += [(feature.get("name", ""),
                  _switch(feature.get("policy", "require"), _ON_POLICIES, _OFF_POLICIES))
                 for feature in domain.root.findall("cpu/feature")]
    return _request(_libvirt_cpu_model(domain) in _HOST_MODELS, switches, psci_version,
                    domain.is_aarch32)


def _switch(word: str, on: Sequence[str], off: Sequence[str]) -> bool | None:
    """True for a word that turns a feature on, False for one that turns it off, else None."""
    return True if word in on else False if word in off else None


def _request(host_model: bool, switches: Sequence[tuple[str, bool | None]],
             psci_version: int | None, aarch32: bool) -> VcpuRequest:
    """The request from (name, on/off) switches in the order QEMU applies them: the last
    word on a feature wins. sveNNN=on turns SVE on and names the length; sveNNN=off names
    nothing (QEMU then picks the lengths below the largest named on)."""
    turned_on: set[str] = set()
    turned_off: set[str] = set()
    lengths: set[int] = set()
    for name, on in switches:
        length = _SVE_LENGTH_RE.fullmatch(name)
        if length:
            if not on:
                continue
            lengths.add(int(length.group(1)))
            name = "sve"
        if name not in FEATURE_ORDER or on is None:
            continue
        (turned_on if on else turned_off).add(name)
        (turned_off if on else turned_on).discard(name)
    return VcpuRequest(host_model, frozenset(turned_on), frozenset(turned_off),
                       frozenset(lengths), psci_version, aarch32)


def requested_vcpu(domain: Domain, supported: FeatureSet,
                   argv: Sequence[str] | None = None) -> RequestedVcpu:
    """The vCPU QEMU creates for this domain on a host whose KVM supports ``supported``
    (HostProfile.default_features): ``vcpu_request(domain, argv).on(supported)``. Every caller
    that judges or records a guest in this domain takes it whole, so the hook, `check`,
    `where`, `plan`, `stamp` and the recorder see the same vCPU."""
    return vcpu_request(domain, argv).on(supported)


def _aarch32_features(features: FeatureSet, supported: FeatureSet) -> FeatureSet:
    """The vCPU of -cpu ...,aarch64=off. QEMU's kvm_arch_init_vcpu (target/arm/kvm.c) adds
    KVM_ARM_VCPU_EL1_32BIT, and takes PMU, SVE and pointer authentication from the CPU's ID
    registers as for a 64-bit vCPU; but arm_cpu_finalize_features (target/arm/cpu.c) skips the
    SVE and pointer authentication finalisers for a CPU without AArch64. pmu=off and sve=off
    act anyway (they change has_pmu and ID_AA64PFR0.SVE directly), pauth=off does not: a 32-bit
    vCPU has pointer authentication wherever the host has it. With SVE its vector lengths
    stay unset, which KVM refuses: the engine says so."""
    return frozenset((features - {"pauth"}) | (supported & {"pauth"}) | {AARCH32})
