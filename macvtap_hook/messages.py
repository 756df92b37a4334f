"""The kinds of action the tool logs, and their journal fields.

Each action's log line carries these fields as logging `extra=`; on a host
with journald (and python-systemd installed) they become fields of the
journal entry, so `journalctl MESSAGE_ID=...` or
`journalctl MACVTAP_HOOK_DOMAIN=web1` finds them. On plain syslog they
are dropped and the text alone remains. The IDs are fixed forever: an
administrator's saved queries and alert rules use them (README, "Journal").
"""

from __future__ import annotations

from macvtap_hook.model import DomainRef

PARKED = "parked"
REATTACHED = "re-attached"
REPAIRED = "repaired"
STUCK = "stuck"
FORGOTTEN = "forgotten"
FAILED = "failed"
STARTED = "started"  # a domain libvirt could not autostart, started once its interfaces exist
# Not a kind of its own: the request that precedes "parked" or "stuck".
PARKING = "parking"

MESSAGE_IDS: dict[str, str] = {
    PARKED: "a6a879fa690d40e18f9b4613d454abeb",
    REATTACHED: "9952f30e72de49f395deb5976be7819a",
    REPAIRED: "2268813c22a741b18bd6d87615deb152",
    STUCK: "951164d8ce1247dda20783baf36e908e",
    FORGOTTEN: "b7ed36f303014c5d8c7909c269df0604",
    FAILED: "3e0f435855154e0185446182d4a0a15e",
    STARTED: "1d1c70c61ed04155a8ee088182b4a26a",
}

FIELD_PREFIX = "MACVTAP_HOOK_"


def fields(action: str, domain: DomainRef, mac: str, uplink: str | None) -> dict[str, str]:
    """The `extra=` of an action's log line: upper-case names, as journald
    takes them (python-systemd's JournalHandler sends a record's attributes
    as fields)."""
    out = {
        f"{FIELD_PREFIX}ACTION": action,
        f"{FIELD_PREFIX}DOMAIN": domain.name,
        f"{FIELD_PREFIX}UUID": domain.uuid,
        f"{FIELD_PREFIX}MAC": mac,
        f"{FIELD_PREFIX}UPLINK": uplink or "",
        f"{FIELD_PREFIX}URI": domain.uri,
    }
    if action in MESSAGE_IDS:
        out["MESSAGE_ID"] = MESSAGE_IDS[action]
    return out
