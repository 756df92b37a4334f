"""macvtap-hook: keep libvirt guests' macvtap NICs alive across uplink loss."""

__version__ = "0.1.0"
