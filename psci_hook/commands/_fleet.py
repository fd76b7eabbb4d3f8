"""The I/O of ``where`` and ``plan``: a fleet directory, guests from files or libvirt.

A fleet directory holds one host profile per host, ``HOST.json`` (what ``psci-hook probe
--json`` prints on that host). Reading thousands of such files costs seconds; the fleet's
decisions cost only as much as its distinct profiles. So the directory keeps an index
(``.psci-hook-fleet-index``): each file's stat signature (size, mtime, ctime, inode) and
profile identity, and each distinct profile once. A file whose signature changed is read
again; an unchanged fleet of 10,000 hosts costs 10,000 stat calls. The index is a cache:
deleting it is always safe, and a directory that is not writable is simply read in full.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from psci_hook import cache
from psci_hook.commands._common import InputError
from psci_hook.domainxml import MAX_DOMAIN_XML, DomainXMLError, parse_domain, vcpu_request
from psci_hook.errors import UnreadableFile, read_text_file
from psci_hook.fleet import HOST_IDENTITY_KEYS, Fleet, Guest, profile_identity
from psci_hook.profile import HostProfile, ProfileError, loads_profile
from psci_hook.record import RecordError, read_record

INDEX_NAME = ".psci-hook-fleet-index"
INDEX_SCHEMA = "psci-hook.fleet-index/v1"
HOST_SUFFIX = ".json"


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_index(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The index's files and profiles; empty when it is missing or unusable (it is a cache)."""
    try:
        data = json.loads((directory / INDEX_NAME).read_text(encoding="utf-8"))
        if data.get("schema") == INDEX_SCHEMA and isinstance(data.get("files"), dict) \
                and isinstance(data.get("profiles"), dict):
            return data["files"], data["profiles"]
    except (OSError, ValueError, AttributeError):
        pass
    return {}, {}


def _host_files(directory: Path) -> Iterator[os.DirEntry[str]]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"{directory}: cannot read the fleet directory: "
                         f"{exc.strerror or exc}") from None
    for entry in entries:
        if entry.name.endswith(HOST_SUFFIX) and not entry.name.startswith(".") \
                and entry.is_file():
            yield entry


def _profile(data: dict[str, Any], origin: str) -> HostProfile:
    try:
        return HostProfile.from_dict(data)
    except ProfileError as exc:
        raise InputError(f"{origin}: {exc}") from None


def load_fleet(directory: Path) -> Fleet:
    """The fleet in ``directory``: host ``H`` is the profile in ``H.json``."""
    old_files, old_profiles = _read_index(directory)
    files: dict[str, list[Any]] = {}
    stored: dict[str, Any] = {}  # identity -> profile content without HOST_IDENTITY_KEYS
    profiles: dict[str, HostProfile] = {}
    hosts: dict[str, str] = {}
    for entry in _host_files(directory):
        try:
            signature = _signature(entry.stat())
        except OSError as exc:
            raise InputError(f"{entry.path}: cannot read: {exc.strerror or exc}") from None
        known = old_files.get(entry.name)
        if isinstance(known, list) and known[:4] == signature and known[4] in old_profiles:
            identity = known[4]
            content = old_profiles[identity]
        else:
            content, identity = _read_host_file(Path(entry.path))
        if identity not in profiles:
            if not isinstance(content, dict):
                raise InputError(f"{directory / INDEX_NAME}: corrupt; delete it")
            profiles[identity] = _profile(content, entry.path)
            stored[identity] = content
        files[entry.name] = [*signature, identity]
        hosts[entry.name[:-len(HOST_SUFFIX)]] = identity
    if not hosts:
        raise InputError(f"{directory}: no host profiles (HOST.json files) in the fleet "
                         "directory")
    if files != old_files or set(stored) != set(old_profiles):
        _write_index(directory, files, stored)
    return Fleet(hosts, profiles)


def _read_host_file(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = read_text_file(path)
    except UnreadableFile as exc:
        raise InputError(str(exc)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        try:  # the profile reader's own one-line message
            loads_profile(text, str(path))
        except ProfileError as exc:
            raise InputError(str(exc)) from None
        raise InputError(f"{path}: not a host profile")  # pragma: no cover (loads refuses)
    content = {k: v for k, v in data.items() if k not in HOST_IDENTITY_KEYS}
    return content, profile_identity(content)


def _write_index(directory: Path, files: dict[str, list[Any]], profiles: dict[str, Any]
                 ) -> None:
    text = json.dumps({"schema": INDEX_SCHEMA, "files": files, "profiles": profiles},
                      separators=(",", ":"))
    with contextlib.suppress(OSError):  # a read-only fleet directory: read in full each time
        cache.write_atomic(directory / INDEX_NAME, text)


def load_change_profile(path: Path) -> tuple[str, HostProfile]:
    """A profile named by ``--change HOST=PROFILE``, with its identity."""
    content, identity = _read_host_file(path)
    return identity, _profile(content, str(path))


# ---------------------------------------------------------------------------------------------
# Guests
# ---------------------------------------------------------------------------------------------


class GuestSkipped(Exception):
    """A guest that cannot be judged (no record, an invalid one, not aarch64): one line."""


def guest_from_xml(data: bytes, origin: str) -> Guest:
    """The domain's name, the state its record says the source QEMU will send, and what the
    domain XML asks of the vCPU (the tree itself is not kept).

    Malformed XML raises InputError; a domain without a usable record GuestSkipped.
    """
    try:
        domain = parse_domain(data)
    except DomainXMLError as exc:
        raise InputError(f"{origin}: {exc}") from None
    name = domain.name or origin
    if not domain.is_aarch64:
        raise GuestSkipped(f"{name}: not an aarch64 domain")
    try:
        record = read_record(domain.root)
    except RecordError as exc:
        raise GuestSkipped(f"{name}: invalid psci-hook record: {exc}") from None
    if record is None:
        raise GuestSkipped(f"{name}: the domain carries no psci-hook record")
    return Guest(name, record.state, vcpu_request(domain))


def read_xml_file(path: Path, stdin: BinaryIO) -> bytes:
    try:
        if str(path) == "-":
            return stdin.read(MAX_DOMAIN_XML + 1)
        with path.open("rb") as f:
            return f.read(MAX_DOMAIN_XML + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def guests_from_directory(directory: Path, stdin: BinaryIO) -> tuple[list[Guest], list[str]]:
    """The guests of every ``*.xml`` domain file in ``directory``, and the ones skipped."""
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory of domain XML files")
    guests: list[Guest] = []
    skipped: list[str] = []
    for path in sorted(directory.glob("*.xml")):
        try:
            guests.append(guest_from_xml(read_xml_file(path, stdin), str(path)))
        except GuestSkipped as exc:
            skipped.append(str(exc))
    return guests, skipped


def guests_from_libvirt(uris: Sequence[str]) -> tuple[list[Guest], list[str]]:
    """The running guests of each libvirt URI (their live XML, which carries the record the
    hook last wrote). LibvirtUnavailable propagates."""
    from psci_hook.libvirt_client import Client, LibvirtCallFailed

    guests: list[Guest] = []
    skipped: list[str] = []
    for uri in uris:
        client = Client.open(uri)
        try:
            for dom in client.running():
                shown = client.name(dom) if len(uris) == 1 else f"{client.name(dom)}@{uri}"
                try:
                    guests.append(guest_from_xml(client.live_xml(dom), shown)._replace(
                        name=shown))
                except (GuestSkipped, InputError, LibvirtCallFailed) as exc:
                    skipped.append(str(exc) if not isinstance(exc, LibvirtCallFailed)
                                   else f"{shown}: {exc}")
        finally:
            client.close()
    return guests, skipped


def domain_from_libvirt(name: str, uri: str | None) -> bytes:
    """The domain's live XML if it runs, else its persistent definition."""
    from psci_hook.libvirt_client import Client, LibvirtCallFailed

    client = Client.open(uri)
    try:
        dom = client.lookup(name)
        return client.live_xml(dom) if client.is_active(dom) else client.persistent_xml(dom)
    except LibvirtCallFailed as exc:
        raise InputError(str(exc)) from None
    finally:
        client.close()
