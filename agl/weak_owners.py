"""Objects that point weakly at their owners (a trainer, a runner) and still pickle, owners included."""

from __future__ import annotations

import weakref
from typing import Any, ClassVar

__all__ = ["WeakOwners"]


class WeakOwners:
    """Mixin: the attributes named in `_owner_refs` hold weak references, which do not pickle; a pickled copy (sent
    to a runner process or a Ray actor) carries the owners themselves, and points at them weakly again once loaded.
    """

    _owner_refs: ClassVar[tuple[str, ...]] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._owner_refs:
            ref = state.get(name)
            state[name] = ref() if ref is not None else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in self._owner_refs:
            owner = state.get(name)
            state[name] = weakref.ref(owner) if owner is not None else None
        self.__dict__.update(state)
