"""The recording service that `psci-hook record` and `psci-hook watch` share.

This host's context for recording (policy, profile, identity, log sink), and the procedure for
one running domain: observe it through libvirt, plan with psci_hook.recorder (pure), write the
plan's records with virDomainSetMetadata, and log one event. The commands only choose the
domains and print.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from psci_hook import __version__, auditlog
from psci_hook.environment import Environment
from psci_hook.errors import first_line
from psci_hook.libvirt_client import Client, LibvirtCallFailed, process_start
from psci_hook.policy import Policy, read_policy
from psci_hook.qemuproc import running_qemu_argv
from psci_hook.recorder import (
    Observed,
    Plan,
    RecordAction,
    Started,
    ThisHost,
    Trigger,
    plan_failed,
    plan_for,
)
from psci_hook.report import guest_summary
from psci_hook.status import ExitStatus
from psci_hook.thishost import host_identity, host_profile, utc_now


class ContextError(Exception):
    """No policy or no host profile: nothing can be recorded (one line, an exit status)."""

    def __init__(self, message: str, status: ExitStatus) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Context:
    host: ThisHost
    identity: dict[str, str]
    sink: auditlog.Sink
    env: Environment

    def now(self) -> str:
        return utc_now(self.env)


def load_context(env: Environment) -> Context:
    """The policy, this host's profile (as the hook finds it: [host] profile, else the
    boot-time cache) and identity (hostname; UUID from the cached capabilities)."""
    # Read as the hook reads it: a mistake in the file must not stop guests from being
    # recorded (the hook would then see no records); each problem is said once per run.
    reading = read_policy(env.config_path)
    for message in reading.messages:
        env.error(f"{message} (`psci-hook config --check` lists every problem)")
    policy = reading.policy
    try:
        profile = host_profile(policy, env)
    except Exception as exc:  # missing, stale, corrupt, unreadable, not probeable
        status = getattr(exc, "status", ExitStatus.INTERNAL_ERROR)
        raise ContextError(f"no usable host profile: {first_line(exc)}",
                           ExitStatus(status)) from None
    identity = host_identity(env, profile)
    host = ThisHost(profile, identity["hostname"], identity.get("uuid", ""), policy)
    return Context(host, identity, sink_for(policy), env)


def sink_for(policy: Policy) -> auditlog.Sink:
    return auditlog.Sink.for_target(policy.log_target, policy.journal_socket,
                                    policy.syslog_socket)


def observe(client: Client, dom: Any) -> Observed:
    """The live and persistent XML, and how the QEMU process started (state reason, start
    time). The reason is read before the XML: a reason from after a restart of the guest would
    be taken for the record's."""
    started = Started(client.running_reason(dom), process_start(client.name(dom)))
    live = client.live_xml(dom)
    persistent = client.persistent_xml(dom) if client.is_persistent(dom) else None
    return Observed(live, persistent, running_qemu_argv(client.name(dom)), started)


def apply(client: Client, dom: Any, plan: Plan) -> None:
    """Write the plan's records, the persistent definition's copy first: once the live record
    shows, the whole plan is written."""
    if plan.config is not None:
        client.set_record(dom, plan.config, live=False, config=True)
    if plan.live is not None:
        client.set_record(dom, plan.live, live=True, config=False)


def record_domain(client: Client, dom: Any, trigger: Trigger, ctx: Context, force: bool = False
                  ) -> Plan:
    """Observe, plan, write and log one running domain. LibvirtUnavailable propagates (the
    connection is gone); a failed call becomes a RecordAction.FAILED plan."""
    name = client.name(dom)
    try:
        plan = plan_for(trigger, observe(client, dom), ctx.host, ctx.now(), force)
        if plan.action == RecordAction.FAILED:
            plan = dataclasses.replace(plan, domain=name)
        if plan.writes:
            apply(client, dom, plan)
    except LibvirtCallFailed as exc:
        plan = plan_failed(name, trigger, str(exc))
    log_plan(ctx, plan)
    return plan


def log_plan(ctx: Context, plan: Plan) -> None:
    auditlog.emit_record(ctx.sink, **plan_event(ctx, plan))


def plan_line(plan: Plan) -> str:
    """One plan as `record` prints it and `watch` says it: domain, action, why, what it wrote."""
    wrote = f" [wrote the {plan.targets()}]" if plan.writes else ""
    return f"{plan.domain}: {plan.action}: {plan.reason}{wrote}\n"


def plan_event(ctx: Context, plan: Plan) -> dict[str, Any]:
    """What one plan logs (and `record --json` prints): action, why, what was written."""
    event: dict[str, Any] = {
        "action": plan.action,
        "trigger": plan.trigger,
        "domain": plan.domain,
        "uuid": plan.uuid,
        "reason": plan.reason,
        "written": [w for w, r in (("live", plan.live), ("persistent", plan.config)) if r],
        "codes": list(plan.codes),
    }
    record = plan.record
    if record is not None:
        event["guest"] = guest_summary(record.state)
        event["origin"] = {"event": record.origin.event, "host": record.origin.host,
                           "time": record.origin.time}
    if plan.previous is not None:
        event["previous_origin"] = {"event": plan.previous.event, "host": plan.previous.host,
                                    "time": plan.previous.time}
    event["host"] = {k: v for k, v in ctx.identity.items() if k in ("hostname", "uuid",
                                                                     "kernel")}
    event["version"] = __version__
    return event
