"""The fleet view: ``where`` and ``plan`` over fleet directories of real (bundled and probed)
host profiles, checked against ``check`` run on the same files, through main(argv, env)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from psci_hook.cli import main
from psci_hook.commands import _fleet
from psci_hook.domainxml import parse_domain, vcpu_request
from psci_hook.engine import GuestState
from psci_hook.environment import Environment
from psci_hook.fleet import Decider, Fleet, profile_identity, where
from psci_hook.profile import bundled_profiles, load_profile
from psci_hook.status import ExitStatus
from tests.helpers import REPO, TEST_URI
from tests.hooktools import DOMAIN, stamped

PROBED = {p.stem: p for p in sorted((REPO / "tests" / "data" / "probed-profiles").glob("*.json"))}
BUNDLED = bundled_profiles()


def run(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    env = Environment.for_test(["psci-hook", *argv], stdin=stdin)
    status = main(env=env)
    return (status, env.stdout.getvalue().decode(),  # type: ignore[attr-defined]
            env.stderr.getvalue())  # type: ignore[attr-defined]


def add_host(fleet: Path, host: str, profile: Path) -> Path:
    """``profile`` as ``probe --json`` on ``host`` would print it: the same kernel facts, with
    this host's name, boot id and probe time."""
    data = json.loads(profile.read_text())
    data.update(hostname=host, boot_id=str(uuid.uuid4()), probed_at="2026-12-05T20:00:00Z")
    path = fleet / f"{host}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def make_fleet(directory: Path, hosts: dict[str, Path]) -> Path:
    directory.mkdir()
    for host, profile in hosts.items():
        add_host(directory, host, profile)
    return directory


def guest_file(directory: Path, name: str, profile: Path) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.xml"
    state = GuestState.booted_on(load_profile(profile))
    path.write_bytes(stamped(DOMAIN.replace(b"<name>vm1</name>",
                                            f"<name>{name}</name>".encode()), state))
    return path


@pytest.fixture(scope="module")
def every_profile_fleet(tmp_path_factory: Any) -> tuple[Path, dict[str, Path]]:
    """A fleet of every bundled and probed profile, three of them on a second host too
    (identical profiles: same kernel facts, another hostname, boot id and probe time)."""
    fleet = tmp_path_factory.mktemp("fleet") / "fleet"
    sources = {**{f"b-{k}": v for k, v in BUNDLED.items()},
               **{f"p-{k}": v for k, v in PROBED.items()}}
    hosts = {}
    for name, path in sources.items():
        copies = ("1", "2") if name in ("b-6.1__a57", "p-7.2__max", "p-6.12__a57") else ("1",)
        for copy in copies:
            hosts[f"{name.replace('__', '-').replace('.', '')}-{copy}"] = path
    return make_fleet(fleet, hosts), sources


@pytest.mark.slow
def test_where_agrees_with_check_for_every_host_of_a_fleet_of_every_profile(
        every_profile_fleet: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    fleet, sources = every_profile_fleet
    host_files = sorted(fleet.glob("*.json"))
    compared = 0
    for name, profile in sources.items():
        xml = guest_file(tmp_path, name, profile)
        status, out, err = run("where", "--domain-xml", str(xml), "--fleet", str(fleet),
                               "--json")
        assert err == ""
        answer = json.loads(out)
        assert answer["domain"] == name
        assert [h["host"] for h in answer["hosts"]] == [p.stem for p in host_files]
        for entry, host_file in zip(answer["hosts"], host_files):
            check_status, check_out, _ = run("check", "--host-profile", str(host_file),
                                             "--domain-xml", str(xml), "--json")
            said = json.loads(check_out)
            assert entry["allowed"] == (check_status == ExitStatus.OK) == (
                said["verdict"] == "allow"), (name, entry["host"])
            assert entry["codes"] == said["codes"], (name, entry["host"])
            assert entry["one_way"] == (entry["allowed"] and "WA_RATCHET" in said["codes"])
            compared += 1
        assert status == (ExitStatus.OK if any(h["allowed"] for h in answer["hosts"])
                          else ExitStatus.VETO)
    assert compared == len(sources) * len(host_files)


def test_where_agrees_with_check_for_a_forced_qemu_generation(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "fleet", {k.replace("__", "-"): v for k, v in PROBED.items()})
    host_files = sorted(fleet.glob("*.json"))
    for name, profile in PROBED.items():
        xml = guest_file(tmp_path / "guests", name, profile)
        _, out, _ = run("where", "--domain-xml", str(xml), "--fleet", str(fleet), "--json",
                        "--qemu", "tolerant")
        for entry, host_file in zip(json.loads(out)["hosts"], host_files):
            status, said, _ = run("check", "--host-profile", str(host_file), "--domain-xml",
                                  str(xml), "--json", "--qemu", "tolerant")
            assert json.loads(said)["qemu_generation"] == "tolerant"
            assert (entry["allowed"], entry["codes"]) == (
                status == ExitStatus.OK, json.loads(said)["codes"]), (name, entry["host"])


def test_identical_profiles_are_decided_once(every_profile_fleet: tuple[Path, dict[str, Path]]
                                             ) -> None:
    fleet_dir, sources = every_profile_fleet
    fleet = _fleet.load_fleet(fleet_dir)
    assert len(fleet.hosts) == len(sources) + 3
    # Hosts differ in hostname, boot id and probe time only: one profile per source file.
    assert len(fleet.profiles) == len(sources)
    decider = Decider()
    guest = GuestState.booted_on(load_profile(PROBED["6.1__a57"]))
    verdicts = where(guest, fleet, decider)
    # One decision per distinct profile, and one more where the PSCI version alone blocks
    # (the guest decided again as a kvm-psci-version boot would make it: Y(psci)).
    psci_only = sum(1 for v in decider.per_profile(guest, fleet).values()
                    if v.blocking_codes and set(v.blocking_codes) == {"PSCI_UNSUPPORTED"})
    assert psci_only and len(verdicts) == len(fleet.hosts)
    assert decider.decisions == len(sources) + psci_only
    where(guest, fleet, decider)
    assert decider.decisions == len(sources) + psci_only  # memoised: asked again, no cost


def test_guests_differing_only_in_their_sve_lengths_are_decided_apart() -> None:
    """The SVE vector lengths a guest booted with are part of its state (they decide
    SVE_LENGTH_LOST): one Decider asked for two such guests (`plan` asks for many) must not
    answer the second with the first's verdict."""
    source = load_profile(PROBED["7.2__max"])
    small = source._replace(sve_lengths=(128, 256))
    fleet = Fleet({"small": "s"}, {"s": small})
    every = GuestState.booted_on(source)  # 128-2048 bits
    up_to_256 = GuestState.booted_on(source, sve_named=frozenset({256}))
    assert every.registers == up_to_256.registers and every.sve_lengths != up_to_256.sve_lengths
    decider = Decider()
    [lost] = where(every, fleet, decider)
    [kept] = where(up_to_256, fleet, decider)
    assert "SVE_LENGTH_LOST" in lost.verdict.codes and "SVE_LENGTH_LOST" not in kept.verdict.codes
    assert decider.decisions == 2


def test_one_guest_state_under_two_vcpu_requests_is_decided_apart() -> None:
    """The memo key holds what the domain asks of the vCPU: one Decider (`plan` asks about many
    guests) must not answer a pmu=off domain with the verdict of a guest with the same state
    in a plain one. Equal requests, read from two parses, share one decision."""
    profile = load_profile(PROBED["7.2__max"])
    fleet = Fleet({"h": "p"}, {"p": profile})
    guest = GuestState.booted_on(profile)
    plain, pmu_off = (vcpu_request(parse_domain(d)) for d in (DOMAIN, PMU_OFF_DOMAIN))
    assert plain != pmu_off and plain.on(profile.default_features()).features == \
        profile.default_features()
    decider = Decider()
    [kept] = where(guest, fleet, decider, plain)
    [lost] = where(guest, fleet, decider, pmu_off)
    assert kept.verdict.allowed and not lost.verdict.allowed
    assert "FEATURE_MISSING" in lost.verdict.codes
    where(guest, fleet, decider, vcpu_request(parse_domain(PMU_OFF_DOMAIN)))
    assert decider.decisions == 2

def test_profile_identity_ignores_only_which_host_and_when() -> None:
    data = json.loads(PROBED["6.1__a57"].read_text())
    same = dict(data, hostname="other", boot_id="x", probed_at="y", provenance="z")
    assert profile_identity(data) == profile_identity(same)
    other_kernel = dict(data, kernel_release="6.1.0-99-arm64")
    unknown_key = dict(data, id_writable_masks={"X": 1})
    assert len({profile_identity(d) for d in (data, other_kernel, unknown_key)}) == 3


def test_the_fleet_index_skips_unchanged_files_and_rereads_changed_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet_dir = make_fleet(tmp_path / "fleet", {f"h{i}": PROBED["6.1__a57"] for i in range(5)})
    first = _fleet.load_fleet(fleet_dir)
    assert (fleet_dir / _fleet.INDEX_NAME).is_file()
    reads: list[Path] = []
    real = _fleet._read_host_file

    def counting(path: Path) -> Any:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(_fleet, "_read_host_file", counting)
    assert _fleet.load_fleet(fleet_dir) == first and reads == []
    add_host(fleet_dir, "h3", PROBED["7.2__a57"])  # an upgraded host, probed again
    (fleet_dir / "h4.json").unlink()
    again = _fleet.load_fleet(fleet_dir)
    assert reads == [fleet_dir / "h3.json"]
    assert sorted(again.hosts) == ["h0", "h1", "h2", "h3"]
    assert again.profile_of("h3").kernel_release.startswith("7.2")
    assert again.hosts["h0"] == first.hosts["h0"] != again.hosts["h3"]
    (fleet_dir / _fleet.INDEX_NAME).write_text("{not json")  # a cache: a broken one is ignored
    assert _fleet.load_fleet(fleet_dir) == again


def test_plan_half_a_6_1_fleet_moving_to_7_2(tmp_path: Path) -> None:
    """Upgraded hosts' fresh guests can no longer come back to the 6.1 hosts (PSCI 1.3); 6.1
    guests keep every destination."""
    hosts = {f"host-{i:02d}": PROBED["6.1__a57"] for i in range(1, 9)}
    fleet = make_fleet(tmp_path / "fleet", hosts)
    guests = tmp_path / "guests"
    guest_file(guests, "vm-61", PROBED["6.1__a57"])
    status, out, err = run("plan", "--fleet", str(fleet), "--change",
                           f"host-0[1-4]={PROBED['7.2__a57']}", "--guests", str(guests),
                           "--format", "json")
    assert status == ExitStatus.OK and err == ""
    result = json.loads(out)
    classes = {c["class"]: c for c in result["classes"]}
    upgraded = next(c for c in classes.values() if c["changed"])
    staying = next(c for c in classes.values() if not c["changed"])
    assert upgraded["hosts"] == ["host-01", "host-02", "host-03", "host-04"]
    # The expected verdicts come from check on the same profiles.
    expected = {}
    for src, dst in ((upgraded, staying), (staying, upgraded), (upgraded, upgraded)):
        def verdict(guest: Path, host: Path) -> tuple[bool, list[str]]:
            xml = guest_file(tmp_path / "check", "g", guest)
            code, text, _ = run("check", "--host-profile", str(host), "--domain-xml", str(xml),
                                "--json")
            return code == ExitStatus.OK, json.loads(text)["codes"]

        before = verdict(PROBED["6.1__a57"], PROBED["6.1__a57"])
        after = verdict(PROBED["7.2__a57"] if src["changed"] else PROBED["6.1__a57"],
                        PROBED["7.2__a57"] if dst["changed"] else PROBED["6.1__a57"])
        if before[0] != after[0]:
            expected[(src["class"], dst["class"])] = after
    got = {(p["source"], p["destination"]): (p["after"]["allowed"], p["after"]["codes"])
           for p in result["pairs"]}
    assert got == expected
    assert got[(upgraded["class"], staying["class"])][0] is False
    assert "PSCI_UNSUPPORTED" in got[(upgraded["class"], staying["class"])][1]
    pair = next(p for p in result["pairs"] if p["source"] == upgraded["class"])
    assert pair["host_pairs"] == 16 and pair["before"]["allowed"] is True
    [guest] = result["guests"]
    assert guest["lost"] == [] and guest["destinations_after"] == 8 and not guest["stranded"]


def test_plan_rolling_7_2_back_strands_its_guests(tmp_path: Path) -> None:
    hosts = {"a": PROBED["6.1__a57"], "b": PROBED["6.1__a57"], "c": PROBED["7.2__a57"],
             "d": PROBED["7.2__a57"]}
    fleet = make_fleet(tmp_path / "fleet", hosts)
    guests = tmp_path / "guests"
    guest_file(guests, "vm-72", PROBED["7.2__a57"])
    guest_file(guests, "vm-61", PROBED["6.1__a57"])
    (guests / "plain.xml").write_bytes(DOMAIN.replace(b"vm1", b"plain"))  # no record
    args = ["plan", "--fleet", str(fleet), "--change", f"c={PROBED['6.1__a57']}",
            f"d={PROBED['6.1__a57']}", "--guests", str(guests)]
    result = json.loads(run(*args, "--format", "json")[1])
    by_name = {g["domain"]: g for g in result["guests"]}
    assert by_name["vm-72"]["destinations_before"] == 2
    assert by_name["vm-72"]["stranded"] and by_name["vm-72"]["destinations_after"] == 0
    [lost] = by_name["vm-72"]["lost"]
    assert lost["hosts"] == 2 and "PSCI_UNSUPPORTED" in lost["after"]["codes"]
    assert not by_name["vm-61"]["lost"] and by_name["vm-61"]["destinations_after"] == 4
    assert result["skipped"] == ["plain: the domain carries no psci-hook record"]
    text = run(*args)[1]
    assert "left with no destination: 1\n      vm-72\n" in text
    assert "vm-72: 2 -> 0 hosts; loses C2 (2 hosts): " in text
    markdown = run(*args, "--format", "markdown")[1]
    assert "| source | destination | host pairs | before | after |" in markdown


def test_plan_new_one_way_moves_after_a_hardware_refresh(tmp_path: Path) -> None:
    """Cortex-A76 hosts report a higher WORKAROUND level than A57 ones: guests booted on an A57
    host can move to them, but only one way."""
    fleet = make_fleet(tmp_path / "fleet", {f"n{i}": BUNDLED["6.1__a57"] for i in range(4)})
    guests = tmp_path / "guests"
    guest_file(guests, "vm-a57", BUNDLED["6.1__a57"])
    status, out, _ = run("plan", "--fleet", str(fleet), "--change", f"n3={BUNDLED['6.1__a76']}",
                         "--guests", str(guests), "--format", "json")
    assert status == ExitStatus.OK
    result = json.loads(out)
    [guest] = result["guests"]
    changed = next(c["class"] for c in result["classes"] if c["changed"])
    assert guest["new_one_way"] == [changed] and guest["lost"] == []
    to_new = [p for p in result["pairs"] if p["destination"] == changed
              and p["source"] != changed]
    assert to_new and all(p["after"]["one_way"] and "WA_RATCHET" in p["after"]["codes"]
                          for p in to_new)


@pytest.mark.parametrize("argv, message", [
    (["where", "--domain-xml", "{guest}", "--fleet", "{missing}"], "cannot read the fleet"),
    (["where", "--domain-xml", "{guest}", "--fleet", "{empty}"], "no host profiles"),
    (["where", "--domain-xml", "{guest}", "--fleet", "{broken}"], "bad.json: malformed JSON"),
    (["where", "--domain-xml", "{plain}", "--fleet", "{fleet}"], "carries no psci-hook record"),
    (["where", "--domain-xml", "{guest}", "--fleet", "{fleet}", "--uri", "test:///default"],
     "--uri goes with --domain"),
    (["plan", "--fleet", "{fleet}", "--change", "nosuch=x.json"], "no host of the fleet"),
    (["plan", "--fleet", "{fleet}", "--change", "h1"], "expected HOST=PROFILE"),
    (["plan", "--fleet", "{fleet}", "--change", "h1={missing}"], "cannot read"),
    (["plan", "--fleet", "{fleet}", "--change", "h1={a76}", "h*={a57}"], "two different"),
    (["plan", "--fleet", "{fleet}", "--change", "h1={a76}", "--guests", "{missing}"],
     "not a directory"),
])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path: Path, argv: list[str], message: str
                                                 ) -> None:
    fleet = make_fleet(tmp_path / "fleet", {"h1": BUNDLED["6.1__a57"]})
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bad.json").write_text("{")
    plain = tmp_path / "plain.xml"
    plain.write_bytes(DOMAIN)
    names = {"guest": str(guest_file(tmp_path, "g", BUNDLED["6.1__a57"])),
             "missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty"),
             "broken": str(tmp_path / "broken"), "plain": str(plain), "fleet": str(fleet),
             "a76": str(BUNDLED["6.1__a76"]), "a57": str(BUNDLED["6.1__a57"])}
    status, out, err = run(*(a.format(**names) for a in argv))
    assert status == ExitStatus.BAD_INPUT and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_where_reads_standard_input_and_prints_text(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "fleet", {"old": BUNDLED["5.10__a57"],
                                            "same": BUNDLED["6.1__a57"],
                                            "wider": BUNDLED["6.1__a76"]})
    xml = guest_file(tmp_path, "vm42", BUNDLED["6.1__a57"]).read_bytes()
    status, out, _ = run("where", "--domain-xml", "-", "--fleet", str(fleet), stdin=xml)
    assert status == ExitStatus.OK
    lines = out.splitlines()
    assert lines[0] == "vm42: 2 of 3 hosts can take it now."
    assert lines[1].startswith("  veto   old  ") and "CPREG_COUNT" in lines[1]
    assert lines[2] == "  allow  same"
    assert lines[3].startswith("  allow  wider  one-way")


# ---------------------------------------------------------------------------------------------
# Guests from libvirt: the in-process test driver (a real libvirt connection, no daemon)
# ---------------------------------------------------------------------------------------------

def _libvirt_domain(tmp_path: Path, name: str, profile: Path) -> str:
    xml = guest_file(tmp_path / "lv", name, profile).read_text()
    xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
    return xml.replace("type='kvm'", "type='test'")


def test_where_and_plan_read_guests_from_libvirt(conn: Any, tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "fleet", {"a": PROBED["6.1__a57"], "b": PROBED["7.2__a57"]})
    conn.createXML(_libvirt_domain(tmp_path, "lv-72", PROBED["7.2__a57"]), 0)
    conn.defineXML(_libvirt_domain(tmp_path, "lv-61", PROBED["6.1__a57"]))  # defined, not running
    status, out, _ = run("where", "--domain", "lv-72", "--uri", TEST_URI, "--fleet", str(fleet),
                         "--json")
    assert status == ExitStatus.OK
    assert [(h["host"], h["allowed"]) for h in json.loads(out)["hosts"]] == [("a", False),
                                                                             ("b", True)]
    status, out, _ = run("where", "--domain", "lv-61", "--uri", TEST_URI, "--fleet", str(fleet))
    assert status == ExitStatus.OK and out.startswith("lv-61: 2 of 2 hosts")
    status, _, err = run("where", "--domain", "nosuch", "--uri", TEST_URI, "--fleet", str(fleet))
    assert status == ExitStatus.BAD_INPUT and "no domain named 'nosuch'" in err
    status, out, _ = run("plan", "--fleet", str(fleet), "--change", f"b={PROBED['6.1__a57']}",
                         "--uri", TEST_URI, "--format", "json")
    result = json.loads(out)
    assert [g["domain"] for g in result["guests"]] == ["lv-72"]  # running guests only
    assert result["guests"][0]["stranded"]
    assert any("not an aarch64 domain" in s for s in result["skipped"])  # the driver's own


def test_where_without_a_reachable_libvirt_exits_20(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "fleet", {"a": PROBED["6.1__a57"]})
    status, _, err = run("where", "--domain", "x", "--uri", f"qemu+unix:///system?socket="
                         f"{tmp_path}/none.sock", "--fleet", str(fleet))
    assert status == ExitStatus.LIBVIRT_UNAVAILABLE and err.count("\n") == 1


def test_two_hosts_probed_alike_have_one_identity(tmp_path: Path) -> None:
    """What ``probe --json`` prints on two hosts with the same kernel facts differs only in the
    keys profile_identity ignores; a different WORKAROUND level makes another profile. Probed
    through tests/kvmfake.py: this x86_64 machine cannot send arm64 ioctls (the probe itself is
    checked against real kernels in tests/nested)."""
    from psci_hook import kvm
    from psci_hook import probe as probe_mod
    from tests import kvmfake

    def probed(host: str, boot: str, now: float, **fake: Any) -> dict[str, Any]:
        boot_id = tmp_path / f"boot-{host}"
        boot_id.write_text(boot + "\n")

        def uname() -> os.uname_result:
            return os.uname_result(("Linux", host, "6.12.0-test-arm64", "#1 SMP", "aarch64"))

        with kvm.Kvm(kvmfake.FakeKvm(**fake)) as handle:
            return probe_mod.probe_host(handle, clock=lambda: now, boot_id_path=boot_id,
                                        uname=uname)

    first = probed("host-a", str(uuid.uuid4()), 1_780_000_000.0)
    second = probed("host-b", str(uuid.uuid4()), 1_780_000_900.0)
    assert first != second and profile_identity(first) == profile_identity(second)
    values = dict(kvmfake.DEFAULT_VALUES)
    values[kvmfake.WA1] = 1  # a CPU that needs no Spectre-v2 workaround
    other = probed("host-c", str(uuid.uuid4()), 1_780_000_000.0, values=values)
    assert profile_identity(other) != profile_identity(first)


# ---------------------------------------------------------------------------------------------
# Y(psci): refused moves that a cold boot with kvm-psci-version makes work
# ---------------------------------------------------------------------------------------------

PSCI_GLOBAL = (b"<qemu:commandline><qemu:arg value='-global'/>"
               b"<qemu:arg value='host-arm-cpu.kvm-psci-version=1.1'/></qemu:commandline>")


def _capped_domain(path: Path) -> Path:
    """A domain whose QEMU sets kvm-psci-version=1.1, recorded by `stamp` with a 7.2 host's
    state: what `record` and `watch` write for it on a 7.2 host."""
    bare = path.with_suffix(".bare.xml")
    bare.write_bytes(DOMAIN.replace(b"<domain type='kvm'>", b"<domain type='kvm' xmlns:qemu="
                                    b"'http://libvirt.org/schemas/domain/qemu/1.0'>")
                     .replace(b"</domain>", PSCI_GLOBAL + b"</domain>"))
    status, out, err = run("stamp", "--guest-profile", str(PROBED["7.2__a57"]),
                           "--domain-xml", str(bare))
    assert status == ExitStatus.OK, err
    path.write_text(out)
    return path


def test_where_marks_hosts_a_kvm_psci_version_boot_would_open(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "fleet", {"h61": PROBED["6.1__a57"],
                                            "h612": PROBED["6.12__a57"],
                                            "h72": PROBED["7.2__a57"]})
    plain = guest_file(tmp_path / "guests", "vm72", PROBED["7.2__a57"])
    status, out, _ = run("where", "--domain-xml", str(plain), "--fleet", str(fleet), "--json")
    hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
    assert status == ExitStatus.OK and hosts["h72"]["allowed"]
    assert not hosts["h612"]["allowed"] and hosts["h612"]["codes"][0] == "PSCI_UNSUPPORTED"
    assert hosts["h612"]["remedy"] == "kvm-psci-version=1.1"
    # 6.1 lacks registers 7.2 lists: no PSCI version makes that move work.
    assert not hosts["h61"]["allowed"] and "remedy" not in hosts["h61"]
    text = run("where", "--domain-xml", str(plain), "--fleet", str(fleet))[1]
    assert ("  veto   h612  PSCI_UNSUPPORTED (Y(psci): movable after a cold boot with "
            "kvm-psci-version=1.1)") in text.splitlines()
    # The remedy holds: the same guest booted with the property, recorded as `stamp` does.
    capped = _capped_domain(tmp_path / "capped.xml")
    assert "PSCI_VERSION" in capped.read_text()
    hosts = {h["host"]: h for h in json.loads(run("where", "--domain-xml", str(capped),
                                                    "--fleet", str(fleet), "--json")[1])["hosts"]}
    assert hosts["h612"]["allowed"] and hosts["h72"]["allowed"] and not hosts["h61"]["allowed"]
    assert run("check", "--host-profile", str(PROBED["6.12__a57"]), "--domain-xml",
               str(capped))[0] == ExitStatus.OK


def test_plan_marks_pairs_movable_with_kvm_psci_version(tmp_path: Path) -> None:
    """Half of a 6.12 fleet moves to 7.2: fresh 7.2 guests cannot come back, unless booted
    with kvm-psci-version=1.1; a 7.2 guest loses the 6.12 hosts, with the same way out."""
    fleet = make_fleet(tmp_path / "fleet", {f"n{i}": PROBED["6.12__a57"] for i in range(4)})
    guests = tmp_path / "guests"
    guest_file(guests, "vm612", PROBED["6.12__a57"])
    args = ["plan", "--fleet", str(fleet), "--change", f"n[01]={PROBED['7.2__a57']}",
            "--guests", str(guests)]
    result = json.loads(run(*args, "--format", "json")[1])
    changed = next(c["class"] for c in result["classes"] if c["changed"])
    back = next(p for p in result["pairs"] if p["source"] == changed
                and p["destination"] != changed)
    assert back["before"]["allowed"] and not back["after"]["allowed"]
    assert back["after"]["codes"][0] == "PSCI_UNSUPPORTED"
    assert back["after"]["remedy"] == "kvm-psci-version=1.1"
    text = run(*args)[1]
    assert "=>  veto PSCI_UNSUPPORTED (Y(psci): movable after a cold boot with " \
           "kvm-psci-version=1.1)" in text


def test_matrix_marks_y_psci_exactly_where_a_capped_guest_is_allowed(tmp_path: Path) -> None:
    names = ("6.1__a57", "6.12__a57", "7.2__a57", "7.2__max", "6.12__max")
    files = [str(PROBED[n]) for n in names]
    cells = json.loads(run("matrix", *files, "--format", "json")[1])["cells"]
    marked = {(c["source"], c["destination"]): c["remedy"] for c in cells if "remedy" in c}
    assert marked == {("7.2__a57", "6.12__a57"): "kvm-psci-version=1.1",
                      ("7.2__a57", "6.12__max"): "kvm-psci-version=1.1",
                      ("7.2__max", "6.12__max"): "kvm-psci-version=1.1"}
    # Each mark is check's own answer for a guest booted with the property, and no other
    # refused pair turns allowed with it.
    for cell in cells:
        if cell["verdict"] == "allow":
            continue
        source = load_profile(PROBED[cell["source"]])
        capped = tmp_path / f"{cell['source']}-{cell['destination']}.xml"
        capped.write_bytes(stamped(DOMAIN, GuestState.booted_on(source, psci_version=0x10001)))
        status = run("check", "--host-profile", str(PROBED[cell["destination"]]),
                     "--domain-xml", str(capped))[0]
        assert (status == ExitStatus.OK) == ((cell["source"], cell["destination"]) in marked)
    grid = run("matrix", *files)[1]
    assert grid.splitlines()[6].split() == ["3", "7.2__a57", "N", "Y(psci)", "Y", "Y*", "Y(psci)"]
    assert "7.2__a57 -> 6.12__a57: PSCI_UNSUPPORTED (Y(psci): movable after a cold boot with " \
           "kvm-psci-version=1.1)" in grid
    page = run("matrix", *files, "--format", "html")[1]
    assert page.count('<td class="psci"') == 3 and "movable with <b>kvm-psci-version=1.1" in page


# ---------------------------------------------------------------------------------------------
# The vCPU each destination's QEMU creates from the domain XML
# ---------------------------------------------------------------------------------------------

NAMES_SVE512 = DOMAIN.replace(b"<cpu mode='host-passthrough' check='none'/>",
                              b"<cpu mode='host-passthrough' check='none'>"
                              b"<feature policy='require' name='sve512'/></cpu>")


def test_where_gives_the_vcpu_the_domain_names_sve_lengths_for_as_check_does(tmp_path: Path
                                                                              ) -> None:
    """A domain naming SVE vector lengths (libvirt's sve512 feature, QEMU's sve512=on) gets,
    on each destination, every length KVM offers up to the largest named, and cannot start
    where one named is not offered (target/arm/cpu64.c arm_cpu_sve_finalize): `where` judges
    that vCPU on every host, as `check --domain-xml` (the hook) does."""
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    host_files = {}
    for host, lengths in (("all", None), ("to512", [128, 256, 384, 512]), ("to256", [128, 256])):
        path = add_host(fleet, host, PROBED["7.2__max"])
        if lengths is not None:
            path.write_text(json.dumps({**json.loads(path.read_text()),
                                        "sve_lengths": lengths}, indent=1) + "\n")
        host_files[host] = path
    # Booted with the domain naming sve512 (stamp: lengths 128-512), and a guest booted with
    # every length up to 2048 whose domain XML names sve512 since.
    bare = tmp_path / "bare.xml"
    bare.write_bytes(NAMES_SVE512)
    status, out, err = run("stamp", "--guest-profile", str(PROBED["7.2__max"]),
                           "--domain-xml", str(bare))
    assert status == ExitStatus.OK, err
    named = tmp_path / "named.xml"
    named.write_text(out)
    edited = tmp_path / "edited.xml"
    edited.write_bytes(stamped(NAMES_SVE512, GuestState.booted_on(load_profile(
        PROBED["7.2__max"]))))
    expected = {("named", "all"): [], ("named", "to512"): [],
                ("named", "to256"): ["FEATURE_MISSING"],
                ("edited", "all"): ["SVE_LENGTH_LOST"], ("edited", "to512"): ["SVE_LENGTH_LOST"],
                ("edited", "to256"): ["FEATURE_MISSING"]}
    for guest, xml in (("named", named), ("edited", edited)):
        _, out, _ = run("where", "--domain-xml", str(xml), "--fleet", str(fleet), "--json")
        hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
        for host, path in host_files.items():
            status, said, _ = run("check", "--host-profile", str(path), "--domain-xml",
                                  str(xml), "--json")
            codes = json.loads(said)["codes"]
            assert [c for c in codes if c in ("FEATURE_MISSING", "SVE_LENGTH_LOST")] == \
                expected[guest, host], (guest, host, codes)
            assert (hosts[host]["allowed"], hosts[host]["codes"]) == (
                status == ExitStatus.OK, codes), (guest, host)


QEMU_NS = b"xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"
PSCI_0_1_DOMAIN = DOMAIN.replace(b"<domain type='kvm'>", b"<domain type='kvm' " + QEMU_NS + b">") \
    .replace(b"</domain>", b"<qemu:commandline><qemu:arg value='-global'/><qemu:arg value="
             b"'host-arm-cpu.kvm-psci-version=0.1'/></qemu:commandline></domain>")
PMU_OFF_DOMAIN = DOMAIN.replace(b"  <cpu mode=", b"  <features><pmu state='off'/></features>\n"
                                b"  <cpu mode=")


def _named(domain: bytes, name: str) -> bytes:
    return domain.replace(b"<name>vm1</name>", f"<name>{name}</name>".encode())


def _stamp(tmp_path: Path, domain: bytes, profile: Path) -> bytes:
    """The domain recorded as `stamp` records a guest booted with it on ``profile``'s host."""
    bare = tmp_path / "bare.xml"
    bare.write_bytes(domain)
    status, out, err = run("stamp", "--guest-profile", str(profile), "--domain-xml", str(bare))
    assert status == ExitStatus.OK, err
    return out.encode()


def _sve_limited(path: Path, lengths: list[int]) -> Path:
    """7.2's max profile on a host whose KVM offers only these SVE vector lengths."""
    path.write_text(json.dumps({**json.loads(PROBED["7.2__max"].read_text()),
                                "sve_lengths": lengths}, indent=1) + "\n")
    return path


def test_plan_judges_each_guest_with_the_vcpu_its_domain_asks_for_as_check_does(
        tmp_path: Path) -> None:
    """`plan` judges the guests it is given as the hook and ``check --domain-xml`` judge them:
    each destination's QEMU creates the vCPU the domain XML asks for there (kvm-psci-version,
    the SVE lengths it names, pmu=off), whatever the guest's own vCPU was. Every guest's
    destinations before and after, lost classes with their codes, and new one-way moves are
    what check says on each host's profile before and after the change."""
    to512 = _sve_limited(tmp_path / "to512.json", [128, 256, 384, 512])
    to256 = _sve_limited(tmp_path / "to256.json", [128, 256])
    before = {"max-1": PROBED["7.2__max"], "max-2": PROBED["7.2__max"], "max-3": to512,
              "a57-1": PROBED["7.2__a57"], "a57-2": PROBED["7.2__a57"]}
    change = {"max-2": to256, "max-3": PROBED["7.2__max"], "a57-2": PROBED["6.12__a57"]}
    after = {**before, **change}
    fleet = make_fleet(tmp_path / "fleet", before)
    a57 = load_profile(PROBED["7.2__a57"])
    maximal = load_profile(PROBED["7.2__max"])
    guests = {
        # kvm-psci-version=0.1: booted with it, set since boot, dropped since boot.
        "psci01": _stamp(tmp_path, PSCI_0_1_DOMAIN, PROBED["7.2__a57"]),
        "psci01-set": stamped(PSCI_0_1_DOMAIN, GuestState.booted_on(a57)),
        "psci01-dropped": stamped(DOMAIN, GuestState.booted_on(a57, psci_version=0x1)),
        # sve512 named: booted with it (lengths 128-512), and named since a boot with all.
        "sve512": _stamp(tmp_path, NAMES_SVE512, PROBED["7.2__max"]),
        "sve512-set": stamped(NAMES_SVE512, GuestState.booted_on(maximal)),
        # pmu=off: booted with it, and set since a boot with a PMU.
        "pmu-off": _stamp(tmp_path, PMU_OFF_DOMAIN, PROBED["7.2__max"]),
        "pmu-off-set": stamped(PMU_OFF_DOMAIN, GuestState.booted_on(maximal)),
        "plain": stamped(DOMAIN, GuestState.booted_on(maximal)),
    }
    directory = tmp_path / "guests"
    directory.mkdir()
    for name, xml in guests.items():
        (directory / f"{name}.xml").write_bytes(_named(xml, name))
    status, out, err = run("plan", "--fleet", str(fleet), "--change",
                           *(f"{h}={p}" for h, p in change.items()), "--guests",
                           str(directory), "--format", "json")
    assert status == ExitStatus.OK and err == ""
    result = json.loads(out)
    class_of = {host: c["class"] for c in result["classes"] for host in c["hosts"]}
    assert len(set(class_of.values())) == len(before)  # each host its own (before, after)

    def check(xml: Path, profile: Path) -> tuple[bool, list[str]]:
        code, said, _ = run("check", "--host-profile", str(profile), "--domain-xml", str(xml),
                            "--json")
        return code == ExitStatus.OK, json.loads(said)["codes"]

    said_by: dict[tuple[str, str], tuple[tuple[bool, list[str]], tuple[bool, list[str]]]] = {}
    for name in guests:
        xml = directory / f"{name}.xml"
        for host in before:
            said_by[name, host] = (check(xml, before[host]), check(xml, after[host]))
        was_one_way = {h: s[0][0] and "WA_RATCHET" in s[0][1] for h, s in
                       ((h, said_by[name, h]) for h in before)}
        now_one_way = {h: s[1][0] and "WA_RATCHET" in s[1][1] for h, s in
                       ((h, said_by[name, h]) for h in before)}
        lost = {class_of[h]: said_by[name, h][1] for h in before
                if said_by[name, h][0][0] and not said_by[name, h][1][0]}
        expected = {
            "domain": name,
            "destinations_before": sum(said_by[name, h][0][0] for h in before),
            "destinations_after": sum(said_by[name, h][1][0] for h in before),
            "lost": sorted((c, False, codes) for c, (_, codes) in lost.items()),
            "new_one_way": sorted({class_of[h] for h in before
                                   if now_one_way[h] and not was_one_way[h]}),
        }
        [judged] = [g for g in result["guests"] if g["domain"] == name]
        assert {**{k: judged[k] for k in expected if k != "lost"},
                "lost": sorted((e["class"], e["after"]["allowed"], e["after"]["codes"])
                               for e in judged["lost"])} == expected, name
        assert judged["stranded"] == (expected["destinations_after"] == 0)
    # Pinned where the guest's own vCPU says otherwise (what `plan` said before it read the
    # domains): a 1.x guest whose QEMU now sets kvm-psci-version=0.1, and a 0.1 guest whose
    # domain no longer sets it, are refused everywhere; the own vCPU allowed both on 7.2 a57.
    by_name = {g["domain"]: g for g in result["guests"]}
    for name in ("psci01-set", "psci01-dropped"):
        assert all(not said[0] and "PSCI_UNSUPPORTED" in said[1]
                   for (guest, _), pair in said_by.items() if guest == name for said in pair)
        assert by_name[name]["destinations_before"] == 0 and by_name[name]["stranded"]
    assert said_by["psci01", "a57-1"] == ((True, []), (True, []))
    # sve512 is not offered on a host limited to 256 bits: QEMU cannot start the vCPU there
    # (FEATURE_MISSING; the own vCPU said SVE_LENGTH_LOST).
    assert by_name["sve512"]["lost"] == [{"class": class_of["max-2"], "hosts": 1, "after": {
        "allowed": False, "codes": ["FEATURE_MISSING"], "one_way": False}}]
    # Named since a boot with every length: the destination's vCPU has 128-512 bits only.
    assert said_by["sve512-set", "max-1"][0] == (False, ["SVE_LENGTH_LOST"])
    assert by_name["sve512-set"]["destinations_before"] == 0
    # pmu=off since a boot with a PMU: no destination creates the PMU the guest has.
    assert "FEATURE_MISSING" in said_by["pmu-off-set", "max-1"][0][1]
    assert by_name["pmu-off-set"]["destinations_before"] == 0
    assert by_name["pmu-off"]["destinations_before"] == 2


def test_plan_reads_what_a_libvirt_domain_asks_of_the_vcpu(conn: Any, tmp_path: Path) -> None:
    """Guests read from libvirt carry their live XML's vCPU request too: a running guest whose
    domain turned the PMU off since it booted with one has no destination (FEATURE_MISSING),
    as `where --domain` and the hook say; the same guest without pmu=off keeps both hosts."""
    fleet = make_fleet(tmp_path / "fleet", {"a": PROBED["7.2__max"], "b": PROBED["7.2__max"]})
    booted = GuestState.booted_on(load_profile(PROBED["7.2__max"]))
    for name, domain in (("lv-pmu-off", PMU_OFF_DOMAIN), ("lv-plain", DOMAIN)):
        xml = _named(stamped(domain, booted), name).decode()
        xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
        conn.createXML(xml.replace("type='kvm'", "type='test'"), 0)
    assert "<pmu state='off'/>" in conn.lookupByName("lv-pmu-off").XMLDesc(0)
    status, out, err = run("plan", "--fleet", str(fleet), "--change", f"b={PROBED['7.2__a57']}",
                           "--uri", TEST_URI, "--format", "json")
    assert status == ExitStatus.OK, err
    by_name = {g["domain"]: g for g in json.loads(out)["guests"]}
    assert by_name["lv-pmu-off"]["destinations_before"] == 0
    assert by_name["lv-plain"]["destinations_before"] == 2
    where_status, where_out, _ = run("where", "--domain", "lv-pmu-off", "--uri", TEST_URI,
                                     "--fleet", str(fleet), "--json")
    assert where_status == ExitStatus.VETO
    assert all("FEATURE_MISSING" in h["codes"] for h in json.loads(where_out)["hosts"])
