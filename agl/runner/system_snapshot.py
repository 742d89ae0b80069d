"""A snapshot of the machine a runner is on, sent with its heartbeats."""

from __future__ import annotations

import logging
import platform
import socket
import time
from typing import Any

__all__ = ["system_snapshot"]

logger = logging.getLogger(__name__)
_GB = 1024**3
_MB = 1024**2


def _gpus() -> list[dict[str, Any]] | None:
    try:
        import gpustat  # type: ignore[import-not-found]
    except ImportError:
        logger.debug("gpustat is not installed; heartbeat has no GPU section")
        return None
    stats = gpustat.new_query()
    return [
        {
            "index": gpu.index,
            "name": gpu.name,
            "memory_used_mb": gpu.memory_used,
            "memory_total_mb": gpu.memory_total,
            "utilization_pct": gpu.utilization,
            "temperature_c": gpu.temperature,
        }
        for gpu in stats.gpus
    ]


def system_snapshot(include_gpu: bool = False) -> dict[str, Any]:
    """CPU, memory, disk and network use of this machine (and GPUs when asked and gpustat is installed)."""
    import psutil

    mem = psutil.virtual_memory()
    disk = psutil.disk_usage("/")
    net = psutil.net_io_counters()
    snapshot: dict[str, Any] = {
        "timestamp": time.time(),
        "host": socket.gethostname(),
        "os": platform.platform(),
        "cpu_name": platform.processor() or platform.machine(),
        "cpu_cores": psutil.cpu_count(logical=False),
        "cpu_threads": psutil.cpu_count(logical=True),
        "cpu_usage_pct": psutil.cpu_percent(interval=None),
        "mem_used_gb": round(mem.used / _GB, 3),
        "mem_total_gb": round(mem.total / _GB, 3),
        "mem_pct": mem.percent,
        "disk_used_gb": round(disk.used / _GB, 3),
        "disk_total_gb": round(disk.total / _GB, 3),
        "disk_pct": disk.percent,
        "bytes_sent_mb": round(net.bytes_sent / _MB, 3) if net else None,
        "bytes_recv_mb": round(net.bytes_recv / _MB, 3) if net else None,
    }
    if include_gpu:
        gpus = _gpus()
        if gpus is not None:
            snapshot["gpus"] = gpus
    return snapshot
