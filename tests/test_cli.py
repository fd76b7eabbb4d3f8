"""The offline commands: check, matrix, stamp and audit, through main(argv, env)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from psci_hook.cli import main
from psci_hook.engine import GuestState
from psci_hook.environment import Environment
from psci_hook.profile import HostProfile, bundled_profiles
from psci_hook.status import ExitStatus
from tests.helpers import REPO
from tests.hooktools import DOMAIN, stamped

GOLDEN = REPO / "tests" / "golden"
P = bundled_profiles()


def run(*argv: str, stdin: bytes = b"", config: Path | None = None) -> tuple[int, str, str]:
    """The command in-process; the hook's configuration is ``config`` (default: none, so that
    this machine's /etc/psci-hook does not count)."""
    env = Environment.for_test(["psci-hook", *argv], stdin=stdin, environ={
        "PSCI_HOOK_CONFIG": str(config or REPO / "tests" / "no-such.conf")})
    status = main(env=env)
    return (status, env.stdout.getvalue().decode(),  # type: ignore[attr-defined]
            env.stderr.getvalue())  # type: ignore[attr-defined]


def golden(name: str, text: str, regenerate: bool) -> None:
    path = GOLDEN / name
    if regenerate or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with --regenerate-golden if right"


def test_check_allows_and_vetoes_with_exit_status() -> None:
    status, out, _ = run("check", "--host-profile", str(P["6.12__a57"]),
                         "--guest-profile", str(P["6.1__a57"]))
    assert status == ExitStatus.OK and out.startswith("verdict: ALLOW")
    status, out, _ = run("check", "--host-profile", str(P["5.10__a57"]),
                         "--guest-profile", str(P["6.1__a57"]), "--json")
    data = json.loads(out)
    assert status == ExitStatus.VETO and data["verdict"] == "veto"
    assert {"register", "outcome", "code", "message"} <= set(data["findings"][0])
    assert data["guest_after"]["registers"]["PSCI_VERSION"] == 0x10001


def test_check_takes_the_qemu_generation_from_a_version() -> None:
    args = ["check", "--host-profile", str(P["6.12__max"]), "--guest-profile",
            str(P["6.12__max"]), "--json"]
    assert json.loads(run(*args)[1])["qemu_generation"] == "legacy"
    assert json.loads(run(*args, "--qemu-version", "11.1")[1])["qemu_generation"] == "tolerant"
    assert json.loads(run(*args, "--qemu", "tolerant")[1])["qemu_generation"] == "tolerant"


@pytest.mark.parametrize(("version", "generation"), [
    ("11.1.0-rc1", "tolerant"), ("11.0.0-rc4", "legacy")])
def test_check_reads_the_major_and_minor_of_a_qemu_version(version: str, generation: str
                                                           ) -> None:
    """What follows X.Y does not count: a release candidate (QEMU tags v11.1.0-rc1) is its
    release's."""
    status, out, err = run("check", "--host-profile", str(P["6.12__max"]), "--guest-profile",
                           str(P["6.12__max"]), "--json", "--qemu-version", version)
    assert status == ExitStatus.OK and err == ""
    assert json.loads(out)["qemu_generation"] == generation


def test_check_reads_the_record_of_a_domain(tmp_path: Path, bundled: dict[str, HostProfile]
                                            ) -> None:
    xml = tmp_path / "vm1.xml"
    xml.write_bytes(stamped(DOMAIN, GuestState.booted_on(bundled["6.12__a57"])))
    status, out, _ = run("check", "--host-profile", str(P["6.1__a57"]), "--domain-xml",
                         str(xml))
    assert status == ExitStatus.VETO and "CPREG_COUNT" in out


NEGATIVE = (b'{"schema": "psci-hook.host-profile/v1", "kernel_release": "6.1", '
            b'"registers": {"PSCI_VERSION": -2}}')


@pytest.mark.parametrize("content", [b"{", b'{"schema": "x"}', b"\xff\xfe", NEGATIVE])
def test_check_and_matrix_refuse_bad_input_with_one_line(tmp_path: Path, content: bytes
                                                         ) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    for argv in (["check", "--host-profile", str(bad), "--guest-profile", str(P["6.1__a57"])],
                 ["matrix", str(bad), str(P["6.1__a57"])]):
        status, out, err = run(*argv)
        assert status == ExitStatus.BAD_INPUT and out == ""
        assert err.count("\n") == 1 and err.startswith("psci-hook: ") and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    [], ["nonsense"], ["check"], ["check", "--host-profile", "x"],
    ["matrix", "--qemu", "newest"], ["check", "--host-profile", "a", "--guest-profile", "b",
                                     "--features", "mte"],
])
def test_usage_errors(argv: list[str]) -> None:
    status, out, err = run(*argv)
    assert status == ExitStatus.BAD_INPUT and out == "" and "Traceback" not in err


def test_check_domain_without_record_and_missing_files(tmp_path: Path) -> None:
    xml = tmp_path / "vm.xml"
    xml.write_bytes(DOMAIN)
    status, out, _ = run("check", "--host-profile", "6.1__a57", "--domain-xml", str(xml))
    assert status == ExitStatus.OK and "NO_RECORD" in out  # as the hook: unrecorded = allow
    config = tmp_path / "veto.conf"
    config.write_text("[hook]\nunrecorded = veto\n")
    status, out, _ = run("check", "--host-profile", "6.1__a57", "--domain-xml", str(xml),
                         config=config)
    assert status == ExitStatus.VETO and "psci-hook: VETO NO_RECORD domain vm1: " in out
    status, _, err = run("check", "--host-profile", str(tmp_path / "no.json"),
                         "--guest-profile", str(P["6.1__a57"]))
    assert status == ExitStatus.BAD_INPUT and "cannot read" in err
    status, _, err = run("check", "--host-profile", "6.1_a57", "--guest-profile", "6.1__a57")
    assert status == ExitStatus.BAD_INPUT
    assert err == ("psci-hook: 6.1_a57: no such file, nor a bundled profile (did you mean "
                   "'6.1__a57'?); `psci-hook profiles` lists them\n")


@pytest.mark.parametrize(("qemu", "fmt"), [("legacy", "text"), ("legacy", "markdown"),
                                           ("legacy", "json"), ("tolerant", "json")])
def test_matrix_golden(qemu: str, fmt: str, regenerate: bool) -> None:
    status, out, _ = run("matrix", "--qemu", qemu, "--format", fmt)
    assert status == ExitStatus.OK
    golden(f"matrix-{qemu}.{ {'text': 'txt', 'markdown': 'md', 'json': 'json'}[fmt]}", out,
           regenerate)


def test_matrix_json_names_profiles_by_file_name(tmp_path: Path) -> None:
    _status, out, _ = run("matrix", str(P["6.1__a57"]), str(P["6.12__a57"]), "--format", "json")
    data = json.loads(out)
    assert data["profiles"] == ["6.1__a57", "6.12__a57"]
    cells = {(c["source"], c["destination"]): c for c in data["cells"]}
    assert cells[("6.12__a57", "6.1__a57")]["verdict"] == "veto"
    assert "CPREG_COUNT" in cells[("6.12__a57", "6.1__a57")]["codes"]
    assert cells[("6.1__a57", "6.12__a57")]["verdict"] == "allow"


def test_stamp_prints_the_domain_with_a_record(tmp_path: Path) -> None:
    xml = tmp_path / "vm.xml"
    xml.write_bytes(DOMAIN.replace(b"<cpu mode='host-passthrough' check='none'/>",
                                   b"<cpu mode='host-passthrough'>"
                                   b"<feature policy='disable' name='sve'/></cpu>"))
    env = Environment.for_test(["psci-hook", "stamp", "--guest-profile", str(P["6.12__max"]),
                                "--domain-xml", str(xml)])
    assert main(env=env) == ExitStatus.OK
    out = env.stdout.getvalue()  # type: ignore[attr-defined]
    assert b'<psci:vcpu features="pmu+pauth"/>' in out
    status, _, err = run("stamp", "--guest-profile", str(P["6.1__a57"]), "--domain-xml",
                         str(xml), "--features", "pmu+sve")
    assert status == ExitStatus.BAD_INPUT and "no migrated list" in err


def test_audit_summarises_a_syslog_file(tmp_path: Path) -> None:
    lines = []
    for i, (decision, codes) in enumerate([("allow", ["WA_RATCHET"]), ("veto", ["CPREG_COUNT"]),
                                           ("veto", ["PSCI_UNSUPPORTED"]), ("allow", [])]):
        event = {"event": "psci-hook.decision", "decision": decision, "op": "migrate",
                 "domain": f"vm{i % 2}", "codes": codes, "reason": f"r{i}",
                 "timestamp": f"2026-11-30T10:00:0{i}Z"}
        lines.append(f"Nov 30 10:00:0{i} host-b psci-hook: {json.dumps(event)}")
    lines.append("Nov 30 10:00:09 host-b kernel: something else")
    log = tmp_path / "syslog"
    log.write_text("\n".join(lines) + "\n")
    status, out, _ = run("audit", str(log), "--json")
    data = json.loads(out)
    assert status == 0 and data["total"] == 4
    assert data["by_decision"] == {"allow": 2, "veto": 2}
    assert [v["reason"] for v in data["latest_vetoes"]] == ["r2", "r1"]
    _, out, _ = run("audit", str(log), "--domain", "vm1", "--since", "2026-11-30T10:00:02Z")
    assert "psci-hook decisions: 1 (allow 1)" in out
    status, _, err = run("audit", str(tmp_path / "missing"))
    assert status == ExitStatus.BAD_INPUT and "cannot read" in err


def test_the_overview_lists_every_command_with_its_summary() -> None:
    from psci_hook.cli import COMMANDS

    env = Environment.for_test(["psci-hook", "--help"])
    with pytest.raises(SystemExit) as info:
        main(env=env)
    assert info.value.code == 0
    # argparse prints --help to sys.stdout; the overview is also what a missing command prints.
    env = Environment.for_test(["psci-hook"])
    assert main(env=env) == ExitStatus.BAD_INPUT
    overview = env.stderr.getvalue()  # type: ignore[attr-defined]
    for name in COMMANDS:
        assert f"    {name}" in overview, name
    assert "what the hook would decide for a guest on a host" in overview


# ---------------------------------------------------------------------------------------------
# check predicts the hook: the same decision, the same exit status, the same line
# ---------------------------------------------------------------------------------------------


def _hook(xml: bytes, profile: Path, config_text: str, tmp_path: Path) -> tuple[int, str]:
    """The hook itself, in-process, on ``profile`` as its [host] profile."""
    from psci_hook.hook import main as hook_main
    from tests.hooktools import CollectingSink

    config = tmp_path / "hook.conf"
    config.write_text(f"{config_text}\n[host]\nprofile = {profile}\n[hook]\nrehearse = no\n")
    env = Environment.for_test(["50-psci-hook", "vm1", "migrate", "begin", "-"], stdin=xml,
                               environ={"PSCI_HOOK_CONFIG": str(config)})
    status = hook_main(env, CollectingSink())
    return int(status), env.stderr.getvalue()  # type: ignore[attr-defined]


def _override(xml: bytes, codes: str) -> bytes:
    return xml.replace(b"</psci:record>", f'<psci:override codes="{codes}" reason="t"/>\n'
                       "    </psci:record>".encode())


@pytest.mark.parametrize(("case", "config_text"), [
    ("veto", ""),
    ("allow", ""),
    ("warn mode", "[hook]\nmode = warn"),
    ("type qemu, not acted on", ""),
    ("type qemu, acted on (spaces)", "[hook]\ndomain_types = kvm qemu"),
    ("not aarch64", ""),
    ("override", ""),
    ("override, not honoured", "[hook]\nallow_domain_override = no"),
    ("unrecorded veto", "[hook]\nunrecorded = veto"),
])
def test_check_says_what_the_hook_does(case: str, config_text: str, tmp_path: Path,
                                       bundled: dict[str, HostProfile]) -> None:
    guest = "6.1__a57" if case == "allow" else "6.12__a57"
    xml = stamped(DOMAIN, GuestState.booted_on(bundled[guest]))
    if case.startswith("type qemu"):
        xml = xml.replace(b"<domain type='kvm'>", b"<domain type='qemu'>")
    elif case == "not aarch64":
        xml = xml.replace(b"arch='aarch64'", b"arch='ppc64'")
    elif case.startswith("override"):
        xml = _override(xml, "CPREG_COUNT, REG_MISSING PSCI_UNSUPPORTED")
    elif case == "unrecorded veto":
        xml = DOMAIN
    destination = P["6.1__a57"] if case == "allow" else P["5.10__a57"]
    hook_status, hook_line = _hook(xml, destination, config_text, tmp_path)
    config = tmp_path / "check.conf"
    config.write_text(config_text + "\n")
    domain = tmp_path / "vm1.xml"
    domain.write_bytes(xml)
    status, out, err = run("check", "--host-profile", str(destination), "--domain-xml",
                           str(domain), config=config)
    assert status == hook_status, (case, out, err)
    assert err == ""
    if hook_line:
        assert hook_line.rstrip("\n") in out.splitlines(), (hook_line, out)
    expected = {"veto": 1, "warn mode": 0, "type qemu, not acted on": 0,
                "type qemu, acted on (spaces)": 1, "not aarch64": 0, "override": 0,
                "override, not honoured": 1, "unrecorded veto": 1, "allow": 0}[case]
    assert status == expected, (case, out)
    # The same from stdin, and with the configuration given as an option.
    assert run("check", "--host-profile", str(destination), "--domain-xml", "-",
               "--config", str(config), stdin=xml)[0] == hook_status


def test_check_text_groups_findings_and_shows_no_after_state_for_a_veto() -> None:
    status, out, _ = run("check", "--host-profile", "5.10__a57", "--guest-profile", "6.12__a57")
    assert status == ExitStatus.VETO
    assert out.startswith("verdict: VETO (the hook exits 1; destination QEMU: legacy)\n")
    assert "psci-hook: VETO CPREG_COUNT domain 6.12__a57: " in out
    assert "(+19: REG_MISSING x18, PSCI_UNSUPPORTED)" in out
    assert out.count("REG_MISSING") == 2  # the veto line and one grouped finding line
    assert "  VETO REG_MISSING CCSIDR_3 (and 17 more: CCSIDR_4, " in out
    assert "guest after migration" not in out
    _, verbose, _ = run("check", "--host-profile", "5.10__a57", "--guest-profile", "6.12__a57",
                        "--verbose")
    assert verbose.count("VETO REG_MISSING") == 18


def test_check_json_says_what_the_hook_does_and_reports_errors_as_json(tmp_path: Path) -> None:
    status, out, _ = run("check", "--host-profile", "5.10__a57", "--guest-profile", "6.12__a57",
                         "--json")
    data = json.loads(out)
    assert status == 1 and data["hook"]["exit_status"] == 1 and data["verdict"] == "veto"
    assert data["hook"]["message"].startswith("psci-hook: VETO CPREG_COUNT ")
    status, out, err = run("check", "--host-profile", str(tmp_path / "x.json"),
                           "--guest-profile", "6.1__a57", "--json")
    assert status == ExitStatus.BAD_INPUT and json.loads(out)["error"].endswith(
        "cannot read: No such file or directory") and err


def test_check_names_configuration_mistakes_and_still_decides(tmp_path: Path) -> None:
    config = tmp_path / "c.conf"
    config.write_text("[hook]\nunrecoreded = veto\n")
    status, _, err = run("check", "--host-profile", "5.10__a57", "--guest-profile", "6.12__a57",
                         config=config)
    assert status == ExitStatus.VETO
    assert err == (f"psci-hook: configuration: {config}:2: unknown setting 'unrecoreded' (did "
                   "you mean 'unrecorded'?); ignored\n")
    assert run("check", "--host-profile", "5.10__a57", "--guest-profile", "6.12__a57",
               "--no-config", "--quiet") == (1, "", "")


def test_matrix_explains_every_y_star_and_has_no_empty_heading() -> None:
    _, out, _ = run("matrix", str(P["6.1__a57"]))
    assert "Why" not in out and out.rstrip().endswith(" 1 6.1__a57     Y")
    _, out, _ = run("matrix", str(P["5.10__a53"]), str(P["6.1__a53"]))
    grid, _, why = out.partition("Why Y* (warning codes")
    assert "Y*" in grid
    assert "  5.10__a53 -> 6.1__a53: DEST_DEFAULT\n" in why


@pytest.mark.parametrize("arch", ["x86_64", "ppc64"])
def test_stamp_refuses_a_domain_that_is_not_aarch64(tmp_path: Path, arch: str) -> None:
    xml = tmp_path / "vm.xml"
    xml.write_bytes(DOMAIN.replace(b"arch='aarch64'", f"arch='{arch}'".encode()))
    status, out, err = run("stamp", "--guest-profile", "6.1__a57", "--domain-xml", str(xml))
    assert (status, out) == (ExitStatus.BAD_INPUT, "")
    assert err == (f"psci-hook: {xml}: the domain's architecture is {arch}, not aarch64 or "
                   "armv7l: psci-hook records arm64 KVM guests only\n")


def test_stamp_refuses_a_32_bit_domain_for_a_profile_without_32_bit_vcpus(
        tmp_path: Path) -> None:
    """The bundled profiles predate 32-bit vCPUs: no record rather than a guessed one."""
    xml = tmp_path / "vm.xml"
    xml.write_bytes(DOMAIN.replace(b"arch='aarch64'", b"arch='armv7l'"))
    status, out, err = run("stamp", "--guest-profile", "6.1__a57", "--domain-xml", str(xml))
    assert (status, out) == (ExitStatus.BAD_INPUT, "")
    assert err == (f"psci-hook: {xml}: a 32-bit guest (armv7l: -cpu host,aarch64=off), and "
                   "6.1__a57 has no 32-bit vCPU (its host has no 32-bit EL1, or an older "
                   "psci-hook probed it)\n")


def test_stamp_refuses_a_feature_the_profile_lacks_and_writes_in_place(tmp_path: Path) -> None:
    xml = tmp_path / "vm.xml"
    xml.write_bytes(DOMAIN.replace(b"<cpu mode='host-passthrough' check='none'/>",
                                   b"<cpu mode='host-passthrough'>"
                                   b"<feature policy='require' name='sve'/></cpu>"))
    before = xml.read_bytes()
    status, out, err = run("stamp", "--guest-profile", "6.1__a57", "--domain-xml", str(xml))
    assert (status, out) == (ExitStatus.BAD_INPUT, "")
    assert "requires vCPU feature(s) sve, which 6.1__a57 does not offer (it has: none, pmu)" \
        in err
    status, out, err = run("stamp", "--guest-profile", "6.12__max", "--domain-xml", str(xml),
                           "--in-place")
    assert (status, out, err) == (ExitStatus.OK, "", "")
    after = xml.read_bytes()
    assert after != before and b'<psci:vcpu features="pmu+pauth+sve"/>' in after
    assert after.replace(after[after.index(b"<psci:record"):
                               after.index(b"</psci:record>") + 14], b"") != b""


def test_refresh_from_the_test_driver_leaves_this_hosts_cache_alone() -> None:
    """`refresh --uri test:///default` once wrote "QEMU 0.0.2" into /run/psci-hook."""
    import libvirt  # noqa: F401  (python3-libvirt, from scripts/deps: missing fails here)
    cache = Path("/run/psci-hook")
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*")} if cache.exists() else {}
    env = Environment.for_test(["psci-hook", "refresh", "--uri", "test:///default"])
    assert env.run_dir == cache
    assert main(env=env) == ExitStatus.BAD_INPUT
    assert env.stderr.getvalue() == (  # type: ignore[attr-defined]
        "psci-hook: refresh: test:///default is libvirt's TEST driver, not this host's QEMU: "
        "/run/psci-hook was left as it was\n")
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("*")} if cache.exists() else {}
    assert after == before


def test_refresh_json_and_quiet(tmp_path: Path) -> None:
    import libvirt  # noqa: F401  (python3-libvirt, from scripts/deps: missing fails here)
    for flag, expect in (("--json", "json"), ("--quiet", "")):
        env = Environment.for_test(["psci-hook", "refresh", "--uri", "test:///default", flag],
                                   run_dir=tmp_path / "run")
        assert main(env=env) == ExitStatus.OK
        out = env.stdout.getvalue().decode()  # type: ignore[attr-defined]
        if expect:
            assert json.loads(out)["capabilities"] == str(tmp_path / "run" / "capabilities.xml")
        else:
            assert out == ""
    env = Environment.for_test(["psci-hook", "refresh", "--uri", "test:///default", "--json"])
    assert main(env=env) == ExitStatus.BAD_INPUT
    error = json.loads(env.stdout.getvalue())  # type: ignore[attr-defined]
    assert error["exit_status"] == 2 and "TEST driver" in error["error"]
