"""An execution's story told from its events alone: node states, checkpoints, batch summaries.

The store keeps events as they arrive and nothing per node; whatever is shown about the nodes of
a run (the ``nodes`` map of the execution JSON) and whatever a run resumes from (checkpoints,
sleeps and sub-workflow waits under way, the items foreach nodes under way have done, when it first
started) is folded here from those events when someone asks.
The one rule of the fold: the first end a node reaches is its end, and an execution that ends
other than succeeded ends every node it never reached with it. Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Final

from engine.core import dag
from engine.core.states import EXECUTION_TERMINAL, NODE_TERMINAL, RESUMED_ENDS
from engine.core.values import JSON, JSONObject

_NODE_MOVES: Final = frozenset({"started", "retrying"})


def node_order(spec_document: JSON) -> tuple[str, ...]:
    """The workflow order (``WorkflowSpec.order``) of a stored spec document's nodes."""
    nodes = spec_document.get("nodes") if isinstance(spec_document, dict) else None
    deps: dict[str, list[str]] = {}
    for node in nodes if isinstance(nodes, list) else ():
        if isinstance(node, dict) and isinstance(node.get("id"), str):
            depends = node.get("depends_on")
            deps[str(node["id"])] = (
                [d for d in depends if isinstance(d, str)] if isinstance(depends, list) else []
            )
    return tuple(dag.topological_order(deps) or deps)


def _pending() -> JSONObject:
    return {
        "status": "pending",
        "output": None,
        "error": None,
        "attempts": 0,
        "started_at": None,
        "finished_at": None,
        "engine_id": None,
    }


def fold_nodes(order: Sequence[str], events: Iterable[JSONObject]) -> dict[str, JSONObject]:
    """The ``nodes`` map of the execution JSON, in ``order``, from the run's events in seq order.

    Events of nodes not in ``order`` are ignored, as is anything after a node's first end.
    A foreach node's ``node.progress`` adds ``items_done`` and ``items_total`` to its record
    (its items that succeeded, of how many), kept from then on: ``items_done`` is its
    ``items_total`` once it has succeeded.
    """
    nodes: dict[str, JSONObject] = {node_id: _pending() for node_id in order}
    ended = False
    for event in events:
        family, _, what = str(event.get("type", "")).partition(".")
        if family == "node":
            node = nodes.get(event.get("node_id"))  # type: ignore[arg-type]
            if node is None or node["status"] in NODE_TERMINAL:
                continue
            moving = what in _NODE_MOVES
            if what == "progress":
                _fold_progress(node, event.get("data"))
                continue
            if not moving and what not in NODE_TERMINAL:
                continue  # node.log and the like say nothing about state
            attempt = event.get("attempt")
            if isinstance(attempt, int) and attempt > node["attempts"]:  # type: ignore[operator]
                node["attempts"] = attempt
            engine_id = event.get("engine_id")
            # a node that never started (blocked, skipped) ran nowhere, whoever decided it
            if engine_id is not None and (moving or node["started_at"] is not None):
                node["engine_id"] = engine_id
            data = event.get("data")
            data = data if isinstance(data, dict) else {}
            if moving:
                node["status"] = "running"
                if node["started_at"] is None:
                    node["started_at"] = event.get("time")
                error = data.get("error") if what == "retrying" else None
                node["error"] = error
            else:
                node["status"] = what
                node["finished_at"] = event.get("time")
                if what == "succeeded" and "items_total" in node:
                    node["items_done"] = node["items_total"]
                node["output"] = data.get("output") if what == "succeeded" else None
                reused = data.get("reused_from") if what == "succeeded" else None
                if isinstance(reused, str):
                    # a retry's kept node ran in the run it retried, not in this one: it has
                    # no start or engine here, and says where its output comes from
                    node["reused_from"] = reused
                error = data.get("error")
                if error is None and what == "skipped":
                    error = data.get("reason")
                node["error"] = error if isinstance(error, str) else None
        elif family == "execution" and what in EXECUTION_TERMINAL and not ended:
            ended = True
            data = event.get("data")
            data = data if isinstance(data, dict) else {}
            if what != "succeeded":
                # nodes the run never reached end with it, so the document tells the story
                for node in nodes.values():
                    if node["status"] not in NODE_TERMINAL:
                        node["status"] = "cancelled"
                        node["finished_at"] = event.get("time")
                        if node["error"] is None:
                            # why the run ended (a timeout, fail_fast), as the engine says it
                            why = data.get("error")
                            node["error"] = why if isinstance(why, str) else f"execution {what}"
    return nodes


_PROGRESS_HEAD: Final = re.compile(r'\{"done": ?(\d{1,18}), ?"items": ?(\d{1,18})[,}]')


def progress_counts(data_json: str) -> JSONObject:
    """What ``fold_nodes`` reads of a node.progress (its counts) from the event's JSON text,
    without decoding the outputs it carries: a long foreach node's events hold them all once
    more, and a read of the run would decode them twice. The whole text is decoded only when
    it does not start as the engine writes it."""
    head = _PROGRESS_HEAD.match(data_json)
    if head is not None:
        return {"done": int(head[1]), "items": int(head[2])}
    data = json.loads(data_json)
    return data if isinstance(data, dict) else {}


def _fold_progress(node: JSONObject, data: JSON) -> None:
    """A node.progress on a foreach node's record: how many of its items are done."""
    if not isinstance(data, dict):
        return
    done, total = data.get("done"), data.get("items")
    if _count(done) and _count(total):
        node["items_done"] = done
        node["items_total"] = total


def _count(value: JSON) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def nodes_done(nodes: Mapping[str, JSONObject]) -> Fraction:
    """Nodes ended, a running foreach node counting for the share of its items done (450 of
    1,000: 0.45), as its node.progress events told them."""
    done = Fraction(0)
    for node in nodes.values():
        if node["status"] in NODE_TERMINAL:
            done += 1
        elif "items_total" in node:
            items, total = node["items_done"], node["items_total"]
            if isinstance(items, int) and isinstance(total, int) and total > 0:
                done += Fraction(min(items, total), total)
    return done


def progress(status: str, done: Fraction | int, total: int) -> int:
    """Percent of nodes ``done`` (``nodes_done``: one node of one at 450 of 1,000 items is
    45%); an ended execution has ended every node."""
    if status in EXECUTION_TERMINAL:
        return 100
    return min(100, int((100 * done) // total)) if total > 0 else 0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A node that ended before the run resumes: it is not run again."""

    node_id: str
    output: JSON
    attempts: int
    status: str = "succeeded"
    """Or failed, blocked, skipped: the dependents' trigger rules count it as it ended."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ItemsDone:
    """The items of a foreach node under way that succeeded, as its node.progress events told
    them: a run resumed elsewhere does not run them again."""

    items: int
    """The node's number of items, as the events said: the engine takes the outputs only for
    a list of that length."""
    outputs: dict[int, JSON]
    """Item index -> output."""


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """What a run carries to the engine it resumes on, read from its stored events."""

    checkpoints: list[Checkpoint] = field(default_factory=list)
    """Nodes that ended (succeeded, failed, blocked, skipped), in the order they ended: never
    run again. A cancelled node ended its run, which is then not resumed."""
    sleeping: dict[str, float] = field(default_factory=dict)
    """Sleep nodes that started and have not ended, with their first start (unix seconds):
    they wait only what is left."""
    started_at: float | None = None
    """The first execution.started (unix seconds): the run's timeout counts from it."""
    retried: dict[tuple[str, int | None], int] = field(default_factory=dict)
    """(node, foreach item or None) -> attempts that failed, of nodes that have not ended:
    their next attempt counts on from there."""
    waiting: dict[tuple[str, int | None, int], float] = field(default_factory=dict)
    """(node, foreach item or None, attempt) -> first start (unix seconds) of sub-workflow
    attempts that asked for their child and had no answer yet, of nodes that have not ended:
    the attempt takes up the same child, and its timeout counts from then."""
    items_done: dict[str, ItemsDone] = field(default_factory=dict)
    """Foreach nodes that have not ended -> the items their node.progress events told as
    succeeded: not run again."""


def resume_point(events: Iterable[JSONObject]) -> ResumePoint:
    """One pass over a run's events (in seq order) for what it resumes from."""
    attempts: dict[str, int] = {}
    ended: set[str] = set()
    out: list[Checkpoint] = []
    sleeping: dict[str, float] = {}
    retried: dict[tuple[str, int | None], int] = {}
    waiting: dict[tuple[str, int | None], tuple[int, float]] = {}  # -> (attempt, first ask)
    items: dict[str, ItemsDone] = {}  # foreach nodes under way -> the items they told done
    started_at: float | None = None
    for event in events:
        family, _, what = str(event.get("type", "")).partition(".")
        node_id = event.get("node_id")
        if family == "execution" and what == "started" and started_at is None:
            started_at = _unix(event.get("time"))
        if family == "subworkflow" and isinstance(node_id, str) and node_id not in ended:
            _fold_wait(waiting, node_id, what, event)
            continue
        if family != "node" or not isinstance(node_id, str) or node_id in ended:
            continue
        if what == "progress":
            _fold_items(items, node_id, event.get("data"))
            continue
        if what not in _NODE_MOVES and what not in NODE_TERMINAL:
            continue
        attempt = event.get("attempt")
        if isinstance(attempt, int) and attempt > attempts.get(node_id, 0):
            attempts[node_id] = attempt
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        if what == "retrying" and isinstance(attempt, int):
            item = data.get("item")
            key = (node_id, item if isinstance(item, int) else None)
            retried[key] = max(retried.get(key, 0), attempt)
            held = waiting.get(key)
            if held is not None and held[0] <= attempt:
                del waiting[key]  # that attempt failed: the next one waits afresh
        if what == "started" and "sleep_s" in data and node_id not in sleeping:
            # only a sleep's node.started carries sleep_s; the first one is when it began, the
            # later ones are its resumptions
            since = _unix(event.get("time"))
            if since is not None:
                sleeping[node_id] = since
        if what in NODE_TERMINAL:
            ended.add(node_id)
            sleeping.pop(node_id, None)
            items.pop(node_id, None)
            tried = attempts.get(node_id, 0)
            if what == "succeeded":
                out.append(Checkpoint(node_id, data.get("output"), tried or 1))
            elif what in RESUMED_ENDS:
                # a blocked or skipped node never tried: 0 attempts
                error = data.get("error") if what != "skipped" else data.get("reason")
                out.append(
                    Checkpoint(
                        node_id, None, tried, what, error if isinstance(error, str) else None
                    )
                )
    if retried:
        retried = {key: n for key, n in retried.items() if key[0] not in ended}
    waits = {
        (node_id, item, attempt): since
        for (node_id, item), (attempt, since) in waiting.items()
        if node_id not in ended and not (node_id in items and item in items[node_id].outputs)
    }
    done = {node_id: told for node_id, told in items.items() if told.outputs}
    return ResumePoint(out, sleeping, started_at, retried, waits, done)


def _fold_items(items: dict[str, ItemsDone], node_id: str, data: JSON) -> None:
    """Add the item outputs a node.progress carried (``data.outputs``, by index as text) to
    those of its node; a number of items other than before starts them over (it was another
    list)."""
    if not isinstance(data, dict):
        return
    count, outputs = data.get("items"), data.get("outputs")
    if not _count(count) or not isinstance(outputs, dict):
        return
    assert isinstance(count, int)
    held = items.get(node_id)
    if held is None or held.items != count:
        held = items[node_id] = ItemsDone(count, {})
    for key, output in outputs.items():
        # digits only (no sign, space or other script's digit), and few of them
        if key.isascii() and key.isdigit() and len(key) <= 10 and int(key) < count:
            held.outputs[int(key)] = output


def retry_keeps(
    order: Sequence[str], deps: Mapping[str, Sequence[str]], ended: Iterable[Checkpoint]
) -> list[Checkpoint]:
    """The nodes a retry keeps, of those a run ``ended`` (in ``order``, topological): each
    that succeeded where every dependency is kept too, or skipped on the same grounds (its
    ``when`` sees the same inputs and results, so it skips again). A node that ran because
    another failed or was cut short (``all_done``, ``one_failed``, ``none_failed`` after a
    skip that will not come) ran on an outcome the retry changes, so it runs again, and so
    does everything after it."""
    status = {c.node_id: c for c in ended}
    settled: set[str] = set()
    kept: list[Checkpoint] = []
    for node_id in order:
        end = status.get(node_id)
        if end is None or end.status not in ("succeeded", "skipped"):
            continue
        if all(d in settled for d in deps.get(node_id, ())):
            settled.add(node_id)
            if end.status == "succeeded":
                kept.append(end)
    return kept


def _fold_wait(
    waiting: dict[tuple[str, int | None], tuple[int, float]],
    node_id: str,
    what: str,
    event: JSONObject,
) -> None:
    """Keep ``waiting`` up to date with a subworkflow.* event: a node's attempt (of one item, for
    foreach) that asks for its child waits from its first ask (an engine it resumes on asks
    again) until an answer ends it (subworkflow.finished) or the attempt fails."""
    attempt = event.get("attempt")
    data = event.get("data")
    item = data.get("item") if isinstance(data, dict) else None
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        return
    key = (node_id, item if isinstance(item, int) and not isinstance(item, bool) else None)
    held = waiting.get(key)
    if what == "requested" and (held is None or held[0] < attempt):
        since = _unix(event.get("time"))
        if since is not None:
            waiting[key] = (attempt, since)
    elif what == "finished" and held is not None and held[0] == attempt:
        # answered: a foreach item's child ended (its node goes on), or the node ends next;
        # asked again after a move, the same child answers at once, within any timeout
        del waiting[key]


def checkpoints(events: Iterable[JSONObject]) -> list[Checkpoint]:
    """The nodes that ended, with output (when they succeeded) and attempts, in the order they
    ended: what a resumed run must not run again."""
    return resume_point(events).checkpoints


def _unix(time: JSON) -> float | None:
    """An event's time (ISO 8601 with a Z) as unix seconds; None when it is not one."""
    if not isinstance(time, str):
        return None
    try:
        parsed = datetime.fromisoformat(time)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What one batch of events changes on the execution's row."""

    first_seq: int
    last_seq: int
    started_at: JSON  # time of execution.started, when the batch has it
    end: tuple[str, JSON, str | None, JSON] | None  # (status, outputs, error, time)
    nodes_done: int  # node ends in the batch, for the progress of listed executions


def summarize(events: Sequence[JSONObject]) -> BatchSummary:
    """One pass over a batch (in seq order) for the execution row's columns."""
    first = last = 0
    started: JSON = None
    end: tuple[str, JSON, str | None, JSON] | None = None
    done = 0
    for event in events:
        seq = event.get("seq")
        if isinstance(seq, int):
            if first == 0 or seq < first:
                first = seq
            if seq > last:
                last = seq
        kind = event.get("type")
        if not isinstance(kind, str):
            continue
        if kind.startswith("node."):
            if kind[5:] in NODE_TERMINAL:
                done += 1
        elif kind.startswith("execution."):
            what = kind[10:]
            if what == "started":
                started = started or event.get("time")
            elif what in EXECUTION_TERMINAL and end is None:
                data = event.get("data")
                data = data if isinstance(data, dict) else {}
                outputs = data.get("outputs")
                error = data.get("error")
                end = (
                    what,
                    outputs if outputs is not None else {},
                    error if isinstance(error, str) else None,
                    event.get("time"),
                )
    return BatchSummary(first, last, started, end, done)
