"""libvirt's qemu hook: forget a domain's parked NICs when it is released;
have a worker look at a domain that starts with parked NICs in its live
metadata (migrated in, or restored from a save) once it runs.

libvirt runs this synchronously while it holds the domain, so it must
never call back into libvirt (that deadlocks), never wait for our lock
(a converging run may be waiting on libvirt for this very domain), print
nothing on stdout (libvirt reads it for some operations) and always exit 0
(a failing hook on 'reconnect' kills the guest). The planner would prune
these records on its next run anyway; this makes it prompt.

A domain arriving by migration runs the destination's hook with 'started'
when its QEMU starts to receive it, long before it runs: the worker this
starts finds it busy with the migration and waits for the end (cli._drain).
QEMU migrates the devices it has, so a parked NIC arrives only as a record
in the live metadata, which libvirt carries along.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import IO

from macvtap_hook import lock, messages
from macvtap_hook.config import Config
from macvtap_hook.errors import LockTimeout
from macvtap_hook.hints import Hint, HintQueue
from macvtap_hook.records import METADATA_URI, holds_nics
from macvtap_hook.state import StateStore

log = logging.getLogger(__name__)
PRUNE_OPERATIONS = ("release",)
ARRIVAL_OPERATIONS = ("started",)


def handle(cfg: Config, domain: str, operation: str, domain_xml: IO[bytes]) -> Hint | None:
    """What the hook does itself; the hint of a run a worker must make, if any."""
    if operation not in (*PRUNE_OPERATIONS, *ARRIVAL_OPERATIONS):
        return None
    try:
        root = ET.parse(domain_xml).getroot()
    except ET.ParseError:
        return None
    if operation in ARRIVAL_OPERATIONS:
        ours = root.find(f"metadata/{{{METADATA_URI}}}parked")
        if ours is None or not holds_nics(ours):
            return None  # nothing of ours: a start as any other
        log.info("domain %s started with parked NICs in its live metadata: a worker re-attaches them", domain)
        return Hint(source="libvirt-hook", action="started", iface=None)
    uuid = (root.findtext("uuid") or "").strip()
    if not uuid:
        return None
    _forget(cfg, uuid)
    return None


def _forget(cfg: Config, uuid: str) -> None:
    store = StateStore(cfg.state_file)
    try:
        with lock.held(cfg.lock_file, 0):
            records = store.load()
            kept = [r for r in records if r.domain.uuid != uuid]
            if len(kept) != len(records):
                store.save(kept)
                for rec in records:
                    if rec.domain.uuid == uuid:
                        log.info(
                            "forgot parked NIC %s of domain %s: the domain was released",
                            rec.mac,
                            rec.domain.name,
                            extra=messages.fields(messages.FORGOTTEN, rec.domain, rec.mac, rec.uplink),
                        )
    except LockTimeout:
        # Leave it to the run that holds the lock or the next one.
        HintQueue(cfg.hints_dir).put(Hint(source="libvirt-hook", action="release", iface=None))
