"""What the libvirt adapter makes of libvirt's answers, against a stand-in
for the libvirt module (the real one is proven by tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest

from macvtap_hook.errors import HypervisorError
from macvtap_hook.hypervisor import UNPLUG_PENDING, LibvirtHypervisor
from macvtap_hook.model import DomainRef, LiveNic

REF = DomainRef("qemu:///system", "u1", 3, "vm1")
NIC = LiveNic(mac="52:54:00:00:00:01", source_dev="eth1", mode="bridge", target="macvtap0", alias="net0", xml="<x/>")


class LibvirtError(Exception):
    def get_error_message(self) -> str:
        return str(self.args[0])

    def get_error_code(self) -> int:
        return 84 if "only on the source host" in self.args[0] else 1  # OPERATION_UNSUPPORTED, INTERNAL_ERROR


class Libvirt:
    libvirtError = LibvirtError
    VIR_DOMAIN_AFFECT_LIVE = 1
    VIR_ERR_NO_DOMAIN = 42
    VIR_ERR_OPERATION_UNSUPPORTED = 84
    VIR_DOMAIN_RUNNING, VIR_DOMAIN_PAUSED = 1, 3
    VIR_DOMAIN_PAUSED_MIGRATION, VIR_DOMAIN_PAUSED_POSTCOPY = 2, 12
    VIR_DOMAIN_JOB_NONE = 0


class Busy:
    """A domain in a job, as libvirt 9.0-12.8 answer (seen on the real stack)."""

    def __init__(self, state: tuple[int, int], stats: dict[str, int] | None) -> None:
        self._state, self.stats = state, stats

    def state(self) -> tuple[int, int]:
        return self._state

    def jobStats(self) -> dict[str, int]:
        if self.stats is None:
            raise LibvirtError("Operation not supported: migration statistics are available only on the source host")
        return self.stats


class Domain:
    def __init__(self, answer: str) -> None:
        self.answer = answer

    def detachDeviceAlias(self, alias: str, flags: int) -> None:
        raise LibvirtError(self.answer)


def adapter(answer: str) -> Any:
    hv = LibvirtHypervisor.__new__(LibvirtHypervisor)
    hv._lv = Libvirt
    hv.uri = REF.uri
    hv._domain = lambda ref: Domain(answer)  # type: ignore[method-assign]
    return hv


def test_qemus_refusal_of_a_second_unplug_is_an_unplug_under_way() -> None:
    answer = f"internal error: unable to execute QEMU command 'device_del': Device net0 is {UNPLUG_PENDING}"
    adapter(answer).request_detach(REF, NIC)  # returns: the caller waits for the removal


def test_any_other_refusal_is_an_error() -> None:
    with pytest.raises(HypervisorError, match="not supported"):
        adapter("operation not supported: detach of interface").request_detach(REF, NIC)


@pytest.mark.parametrize(
    ("state", "stats", "job"),
    [
        ((3, 2), None, "a migration"),  # the destination: paused for it, no statistics
        ((3, 0), None, "a migration"),  # the destination while its QEMU starts
        ((1, 1), {"type": 2, "operation": 5}, "an outgoing migration"),
        ((1, 1), {"type": 2, "operation": 2}, "a save"),
        ((1, 1), {"type": 0}, None),
        ((3, 1), {"type": 0}, None),  # paused by the user: NICs can change
    ],
)
def test_a_domains_job(state: tuple[int, int], stats: dict[str, int] | None, job: str | None) -> None:
    hv = adapter("")
    hv._domain = lambda ref: Busy(state, stats)
    assert hv.job_of(REF) == job
