"""libvirt's qemu hook: forget a domain's parked NICs when it is released.

libvirt runs this synchronously while it holds the domain, so it must
never call back into libvirt (that deadlocks), never wait for our lock
(a converging run may be waiting on libvirt for this very domain), print
nothing on stdout (libvirt reads it for some operations) and always exit 0
(a failing hook on 'reconnect' kills the guest). The planner would prune
these records on its next run anyway; this makes it prompt.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import IO

from macvtap_hook import lock, messages
from macvtap_hook.config import Config
from macvtap_hook.errors import LockTimeout
from macvtap_hook.hints import Hint, HintQueue
from macvtap_hook.state import StateStore

log = logging.getLogger(__name__)
PRUNE_OPERATIONS = ("release",)


def handle(cfg: Config, operation: str, domain_xml: IO[bytes]) -> None:
    if operation not in PRUNE_OPERATIONS:
        return
    try:
        uuid = (ET.parse(domain_xml).getroot().findtext("uuid") or "").strip()
    except ET.ParseError:
        return
    if not uuid:
        return
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
