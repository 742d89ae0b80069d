"""`Dataset`: what the trainer and algorithms accept as training or validation data."""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Dataset"]

T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class Dataset(Protocol[T_co]):
    """Anything with a length and integer indexing, such as a list of tasks."""

    def __getitem__(self, index: int) -> T_co:
        """The task at `index`."""
        ...

    def __len__(self) -> int:
        """The number of tasks."""
        ...
