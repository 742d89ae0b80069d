"""`system_snapshot`: the heartbeat payload of a worker; implemented in `agl.runner.system_snapshot`."""

from agl.runner.system_snapshot import system_snapshot

__all__ = ["system_snapshot"]
