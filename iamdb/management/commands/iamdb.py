"""``manage.py iamdb``: what each database's credential source is doing, and a deploy check.

    manage.py iamdb                 a report per alias: engine, source, user, credential
                                    age and expiry, cache state, counters, last error
    manage.py iamdb --database X    one alias
    manage.py iamdb --check         also open a real connection per alias; exit 1 if any fails
    manage.py iamdb --json          one JSON document, for machines

It never prints a secret: sources describe themselves without one, and errors are
iamdb's secret-free messages.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from ... import metrics
from ...credentials import CredentialSource, as_source
from ...errors import IamdbError, describe


class Command(BaseCommand):
    # A health probe and a diagnostic: it must not depend on (or run) the whole system check,
    # which from Django 6.1 connects to every database.
    requires_system_checks: list[str] = []
    help = "Report each database's iamdb credential source, and with --check open a connection to each."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", action="append", help="an alias (repeatable; default: every one)")
        parser.add_argument(
            "--check", action="store_true", help="open a connection per alias; exit 1 if any fails"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON document")

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = options["database"] or list(connections)
        unknown = [alias for alias in aliases if alias not in connections.settings]
        if unknown:
            raise CommandError(f"unknown database alias(es): {', '.join(unknown)}")
        reports = [report(alias, check=options["check"]) for alias in aliases]
        if options["json"]:
            self.stdout.write(json.dumps({"databases": reports}, indent=2, sort_keys=True))
        else:
            for entry in reports:
                self.stdout.write(render(entry))
        failed = [entry["alias"] for entry in reports if entry.get("check", {}).get("ok") is False]
        if failed:
            raise CommandError(f"connection check failed for: {', '.join(failed)}")


def report(alias: str, *, check: bool) -> dict[str, Any]:
    """What is known of one alias, without a secret. With ``check``, a connection is opened."""
    settings_dict = connections.settings[alias]
    entry: dict[str, Any] = {"alias": alias, "engine": settings_dict.get("ENGINE", "")}
    try:
        source = as_source(settings_dict.get("PASSWORD"), alias=alias)
    except IamdbError as exc:
        source, entry["error"] = None, describe(exc)
    entry["source"] = source.describe() if source is not None else None
    entry["user"] = settings_dict.get("USER") or None
    if check:  # first, so that the state below shows what the connection fetched
        entry["check"] = check_connection(alias)
    if source is not None:
        entry.update(credential_state(alias, source))
    return entry


def credential_state(alias: str, source: CredentialSource) -> dict[str, Any]:
    state: dict[str, Any] = {}
    wrapper: Any = connections[alias]
    binding = getattr(wrapper, "iamdb", None)
    if binding is None:  # Django's stock backend with a source: the system check says why
        state["warning"] = "a source on Django's stock ENGINE: use the iamdb backend"
        return state
    try:
        target = binding.target
    except AttributeError:  # pragma: no cover - a plain password has no target
        return state
    except IamdbError as exc:
        return {"error": describe(exc)}
    credential = source.cached(target)
    state["cache"] = source.phase(target)
    now = time.time()
    if credential is not None:
        state["user"] = credential.username or target.user or None
        if credential.issued_at is not None:
            state["credential_age_s"] = round(now - credential.issued_at, 1)
        if credential.expires_at is not None:
            state["expires_in_s"] = round(credential.expires_at - now, 1)
        if credential.refresh_after is not None:
            state["refresh_in_s"] = round(credential.refresh_after - now, 1)
    counts = metrics.snapshot().get((alias, source.describe()))
    if counts is not None:
        state["counters"] = {
            "fetches": counts.fetches,
            "fetch_failures": counts.fetch_failures,
            "logins_refused": counts.logins_refused,
            "retirements": counts.retirements,
        }
        state["last_error"] = counts.last_error
    return state


def check_connection(alias: str) -> dict[str, Any]:
    wrapper: Any = connections[alias]
    started = time.monotonic()
    try:
        wrapper.ensure_connection()
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return {"ok": False, "error": describe(exc), "seconds": round(time.monotonic() - started, 3)}
    finally:
        wrapper.close()
    return {"ok": True, "seconds": round(time.monotonic() - started, 3)}


def render(entry: dict[str, Any]) -> str:
    lines = [f"{entry['alias']}: {entry['engine']}"]
    for key in ("source", "user", "cache", "credential_age_s", "expires_in_s", "refresh_in_s", "warning"):
        if entry.get(key) is not None:
            lines.append(f"  {key.replace('_s', ' (s)').replace('_', ' ')}: {entry[key]}")
    counters = entry.get("counters")
    if counters:
        lines.append("  counters: " + ", ".join(f"{k}={v}" for k, v in counters.items()))
    if entry.get("last_error") or entry.get("error"):
        lines.append(f"  last error: {entry.get('error') or entry.get('last_error')}")
    check = entry.get("check")
    if check is not None:
        verdict = "ok" if check["ok"] else f"FAILED: {check['error']}"
        lines.append(f"  connection check: {verdict} ({check['seconds']} s)")
    return "\n".join(lines)
