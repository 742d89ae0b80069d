"""AGL's data model: rollouts, attempts, spans, resources, workers and query options."""

from agl.types.core import *  # noqa: F403
from agl.types.core import __all__ as _core_all
from agl.types.resources import *  # noqa: F403
from agl.types.resources import __all__ as _resources_all
from agl.types.tracer import *  # noqa: F403
from agl.types.tracer import __all__ as _tracer_all

__all__ = [*_core_all, *_resources_all, *_tracer_all]
