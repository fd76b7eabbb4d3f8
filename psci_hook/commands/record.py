"""``psci-hook record``: write the guest record of running domains through libvirt.

For each domain (named, or every running one with ``--all``) the plan of psci_hook.recorder
(reconcile) is applied with virDomainSetMetadata: how the domain's QEMU process started is
read from libvirt's state reason and the process start time; a guest that cold-booted here
gets this host's values (replacing a stale record), one that loaded its state here (migration,
restore, snapshot revert) keeps the record that came with it, brought to its state here, and
one nobody can tell has its record marked unverified (``--force``: this host's values). One
line per domain on stdout says what was done and why, and one event per domain goes to the log.

The per-domain procedure (observe, plan, write, log) is psci_hook.recording's, shared with
``watch``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from psci_hook.environment import Environment
from psci_hook.libvirt_client import Client, LibvirtCallFailed, LibvirtUnavailable
from psci_hook.recorder import Plan, RecordAction, Trigger, plan_failed
from psci_hook.recording import (
    Context,
    ContextError,
    load_context,
    log_plan,
    plan_event,
    plan_line,
    record_domain,
)
from psci_hook.status import ExitStatus

HELP = ("write the psci-hook guest record of running domains through libvirt (this host's "
        "values for guests that cold-booted here; a record that came with a migration is kept)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domains", nargs="*", metavar="DOMAIN", help="domain names or UUIDs")
    parser.add_argument("--all", action="store_true", help="every running domain")
    parser.add_argument("--force", action="store_true",
                        help="replace any record (also one that came with a migration) with "
                        "this host's values: for guests that cold-booted here")
    parser.add_argument("--uri", default=None,
                        help="libvirt connection URI (default: libvirt's default, "
                        "qemu:///system for root)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON document: each domain's event (as logged) and the "
                        "counts; errors as JSON too")


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    def fail(message: str, status: ExitStatus) -> ExitStatus:
        if args.json:
            env.write_out(json.dumps({"error": message, "exit_status": int(status)}) + "\n")
        env.error(f"record: {message}")
        return status

    if bool(args.domains) == bool(args.all):
        return fail("name one or more domains, or give --all (not both)", ExitStatus.BAD_INPUT)
    try:
        ctx = load_context(env)
    except ContextError as exc:
        return fail(str(exc), exc.status)
    try:
        client = Client.open(args.uri)
    except LibvirtUnavailable as exc:
        return fail(str(exc), ExitStatus.LIBVIRT_UNAVAILABLE)
    plans: list[Plan] = []
    try:
        targets = _targets(client, args, ctx, plans)
        if not args.json:
            for plan in plans:
                env.write_out(plan_line(plan))
        for dom in targets:
            plan = record_domain(client, dom, Trigger.RECONCILE, ctx, force=args.force)
            plans.append(plan)
            if not args.json:
                env.write_out(plan_line(plan))
    except LibvirtUnavailable as exc:
        return fail(str(exc), ExitStatus.LIBVIRT_UNAVAILABLE)
    finally:
        client.close()
    counts: dict[str, int] = {}
    for plan in plans:
        counts[plan.action] = counts.get(plan.action, 0) + 1
    status = ExitStatus.NOT_ALL_RECORDED if counts.get(RecordAction.FAILED) else ExitStatus.OK
    if args.json:
        env.write_out(json.dumps({
            "domains": [plan_event(ctx, plan) for plan in plans],
            "counts": {str(a): counts[a] for a in RecordAction if a in counts},
            "exit_status": int(status)}) + "\n")
        return status
    summary = ", ".join(f"{counts[a]} {a}" for a in RecordAction if a in counts) or "no domain"
    env.write_out(f"{len(plans)} domain{'s' if len(plans) != 1 else ''}: {summary}\n")
    return status


def _targets(client: Client, args: argparse.Namespace, ctx: Context, plans: list[Plan]
             ) -> list[Any]:
    """The running domains to record; named ones that are missing or not running are
    reported (failed, skipped) in ``plans`` and the log."""
    if args.all:
        return sorted(client.running(), key=client.name)
    found: list[Any] = []
    for key in dict.fromkeys(args.domains):
        try:
            dom = client.lookup(key)
            running = client.is_active(dom)
        except LibvirtCallFailed as exc:
            plan = plan_failed(key, Trigger.RECONCILE, str(exc))
        else:
            if running:
                found.append(dom)
                continue
            plan = Plan(client.name(dom), "", Trigger.RECONCILE, RecordAction.SKIPPED,
                        "not running (a record is written for running domains only)")
        plans.append(plan)
        log_plan(ctx, plan)
    return found
