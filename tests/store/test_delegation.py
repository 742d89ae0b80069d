"""Generated pass-through methods and argument binding: wrappers write only what has logic of its own."""

from __future__ import annotations

import inspect

import pytest

from agl.store.base import LightningStore
from agl.store.delegation import PROTOCOL_METHODS, bind_arguments
from agl.store.server import LightningStoreServer
from agl.store.threading import LightningStoreThreaded
from agl.types.core import UNSET


def test_bind_arguments_fills_defaults_and_refuses_what_the_call_would() -> None:
    assert bind_arguments("update_rollout", ("r1",), {"status": "failed"}) == {
        "rollout_id": "r1",
        "input": UNSET,
        "mode": UNSET,
        "resources_id": UNSET,
        "status": "failed",
        "config": UNSET,
        "metadata": UNSET,
    }
    for args, kwargs in [((), {}), (("r",), {"bogus": 1}), (("r",) * 8, {}), (("r",), {"rollout_id": "r"})]:
        with pytest.raises(TypeError):
            bind_arguments("update_rollout", args, kwargs)


@pytest.mark.parametrize("cls", [LightningStoreServer, LightningStoreThreaded], ids=lambda c: c.__name__)
def test_wrappers_restate_no_pass_through_method(cls: type[LightningStore]) -> None:
    """The server and the threaded wrapper write only the methods with logic of their own; the rest are generated."""
    written = {name for name in PROTOCOL_METHODS if name in vars(cls) and not hasattr(vars(cls)[name], "__wrapped__")}
    assert written <= {"close", "statistics"}
    for name in PROTOCOL_METHODS:
        if name not in written:
            assert inspect.unwrap(getattr(cls, name)) is getattr(LightningStore, name)
            assert getattr(cls, name).__doc__ == getattr(LightningStore, name).__doc__


def test_a_wrapper_without_a_forward_method_is_refused() -> None:
    from agl.store.delegation import forwards_protocol

    class NoForward(LightningStore):
        pass

    with pytest.raises(TypeError, match="_forward"):
        forwards_protocol(NoForward)


def test_the_clients_plain_calls_are_generated_and_the_others_written() -> None:
    """The client writes a method only where it has logic of its own; its plain calls come from the route table."""
    from agl.store.client import _ANSWERS, LightningStoreClient

    generated = {name for name in PROTOCOL_METHODS if hasattr(vars(LightningStoreClient).get(name), "__wrapped__")}
    assert generated == set(_ANSWERS)
    written = {name for name in PROTOCOL_METHODS if name in vars(LightningStoreClient)} - generated
    assert written == {
        "enqueue_rollout",
        "enqueue_many_rollouts",
        "dequeue_rollout",
        "dequeue_many_rollouts",
        "query_rollouts",
        "add_span",
        "add_many_spans",
        "get_many_span_sequence_ids",
        "wait_for_rollouts",
        "close",
    }
