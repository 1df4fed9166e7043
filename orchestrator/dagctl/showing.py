"""How dagctl shows things: tables, one-line events, and a run's progress, from API JSON.

Everything here is pure over the JSON the orchestrator returns and takes ``now`` as an argument,
so it renders the same in a test as in a terminal. ``RunProgress`` is the one piece of state: a
run's nodes folded from its execution document and its events, drawn live or as plain lines.

Text from the server reaches the screen only through ``text_of``, ``brief``, ``compact`` and
``ref`` (or ``printable`` itself), which write control characters as escapes: a Lua error with
an ANSI sequence in it shows as ``\\x1b[31m``, it does not recolour the terminal. What is one
line a record (``event_line``, ``ProgressLines``) goes through ``one_line``, which escapes
newlines and tabs too. ``-o json`` prints the documents as they came.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.style import StyleType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from engine.core.printing import duration as duration  # shared with engine run
from engine.core.states import EXECUTION_TERMINAL
from engine.core.values import JSON, JSONObject
from orchestrator.dagctl.calling import one_line, printable

STATE_STYLES = {
    "queued": "dim",
    "pending": "dim",
    "running": "cyan",
    "succeeded": "green",
    "partial": "yellow",
    "failed": "red",
    "skipped": "yellow",
    "blocked": "magenta",
    "cancelled": "yellow",
    "timed_out": "red",
    "ready": "green",
    "joining": "cyan",
    "draining": "yellow",
    "unhealthy": "red",
}
STATE_MARKS = {
    "pending": " ",
    "running": ">",
    "succeeded": "+",
    "failed": "x",
    "skipped": "-",
    "blocked": "!",
    "cancelled": "-",
}
NODE_DONE = frozenset({"succeeded", "failed", "skipped", "blocked", "cancelled"})


# -- small formats --------------------------------------------------------------------------


def timestamp(value: JSON) -> float | None:
    """Seconds since the epoch from the API's ISO 8601 text (or a number); None if neither."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def span(start: JSON, end: JSON, now: float | None = None) -> str:
    """How long from ``start`` to ``end`` (or to ``now`` while it is still going)."""
    t0 = timestamp(start)
    if t0 is None:
        return ""
    t1 = timestamp(end)
    if t1 is None:
        t1 = now
    return duration(None if t1 is None else t1 - t0)


def age(value: JSON, now: float) -> str:
    t = timestamp(value)
    return "" if t is None else duration(now - t)


def clock(value: JSON) -> str:
    """The time of day of an API time, ``07:35:25.123Z``, for event lines."""
    if isinstance(value, str) and "T" in value:
        return printable(value.split("T", 1)[1])
    return text_of(value)


def short_id(value: JSON, length: int = 8) -> str:
    """The tail of an id: execution ids start with their creation time, so runs made close
    together share a prefix, while their random tails tell them apart."""
    return "" if value is None else printable(str(value)[-length:])


def compact(value: JSON, limit: int = 60) -> str:
    """JSON on one line, cut to ``limit`` characters with an ellipsis."""
    # JSON escapes C0 controls itself, not DEL, C1 or lone surrogates
    text = printable(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def brief(value: JSON, limit: int = 60) -> str:
    """Text as it is, anything else as compact JSON; cut to ``limit`` characters."""
    if isinstance(value, str):
        value = printable(value)
        return value if len(value) <= limit else value[: max(limit - 3, 0)] + "..."
    return compact(value, limit)


def text_of(value: JSON) -> str:
    """A value from the server as text to show, its control characters escaped."""
    return "" if value is None else printable(str(value))


def pad(text: str, width: int) -> str:
    """``text`` padded to ``width`` terminal columns: a wide character (CJK, most emoji)
    takes two, where ``str.ljust`` would count one."""
    return text + " " * max(width - cell_len(text), 0)


def ref(doc: JSONObject) -> str:
    workflow, version = doc.get("workflow_id"), doc.get("version")
    if workflow is None:
        return ""
    return printable(f"{workflow}@{version}" if version else str(workflow))


def styled(state: JSON) -> Text:
    name = text_of(state)
    return Text(name, style=STATE_STYLES.get(name, ""))


def _obj(value: JSON) -> JSONObject:
    return value if isinstance(value, dict) else {}


def _list(value: JSON) -> list[JSON]:
    return value if isinstance(value, list) else []


# -- tables ---------------------------------------------------------------------------------


class _Table(Table):
    """A table whose text cells are plain text: rich markup (``[bold]``, ``[/]``) or an
    ``:emoji:`` code in a workflow name or an error shows as written, and cannot fail to
    parse."""

    def add_row(
        self,
        *renderables: RenderableType | None,
        style: StyleType | None = None,
        end_section: bool = False,
    ) -> None:
        cells = [Text(cell) if isinstance(cell, str) else cell for cell in renderables]
        super().add_row(*cells, style=style, end_section=end_section)


def _table(*columns: str) -> Table:
    table = _Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def workflows_table(workflows: Iterable[JSON]) -> Table:
    table = _table("ID", "VERSION", "NAME", "VERSIONS", "NODES", "TRIGGERS")
    for item in workflows:
        wf = _obj(item)
        spec = _obj(wf.get("spec"))
        versions = wf.get("versions")
        count = len(versions) if isinstance(versions, list) else versions
        nodes = wf.get("nodes", spec.get("nodes"))
        triggers = wf.get("triggers", spec.get("triggers"))
        table.add_row(
            text_of(wf.get("id")),
            text_of(wf.get("version", wf.get("latest"))),
            text_of(wf.get("name", spec.get("name"))),
            text_of(count),
            text_of(len(nodes) if isinstance(nodes, list) else nodes),
            text_of(len(triggers) if isinstance(triggers, list) else triggers),
        )
    return table


def executions_table(executions: Iterable[JSON], now: float) -> Table:
    table = _table("ID", "WORKFLOW", "STATUS", "PROGRESS", "AGE", "DURATION", "ERROR")
    for item in executions:
        doc = _obj(item)
        progress = doc.get("progress")
        table.add_row(
            text_of(doc.get("id")),
            ref(doc),
            styled(doc.get("status")),
            "" if progress is None else f"{text_of(progress)}%",
            age(doc.get("created_at"), now),
            span(doc.get("started_at"), doc.get("finished_at"), now),
            brief(doc.get("error"), 60) if doc.get("error") is not None else "",
        )
    return table


def engines_table(engines: Iterable[JSON]) -> Table:
    table = _table("ID", "ADDRESS", "STATE", "IN FLIGHT", "CAPACITY", "VERSION", "LAST ERROR")
    for item in engines:
        engine = _obj(item)
        table.add_row(
            text_of(engine.get("id")),
            text_of(engine.get("address")),
            styled(engine.get("state")),
            text_of(engine.get("in_flight")),
            text_of(engine.get("capacity")),
            text_of(engine.get("version")),
            text_of(engine.get("last_error")),
        )
    return table


def triggers_table(triggers: Iterable[JSON]) -> Table:
    table = _table("ID", "WORKFLOW", "TYPE", "SCHEDULE", "STATE", "NEXT FIRE TIMES")
    for item in triggers:
        t = _obj(item)
        if t.get("type") == "cron":
            schedule = f"{text_of(t.get('cron'))} ({text_of(t.get('timezone'))})"
        else:
            auth = t.get("auth")
            schedule = f"POST {text_of(t.get('path'))}" + (f" [{text_of(auth)}]" if auth else "")
        upcoming = _list(t.get("next_fire_times"))
        zone = text_of(t.get("timezone")) or "UTC"
        table.add_row(
            text_of(t.get("id")),
            text_of(t.get("workflow_id")),
            text_of(t.get("type")),
            schedule,
            styled("paused" if t.get("paused") else "active"),
            ", ".join(wall_clock(text_of(u), zone) for u in upcoming),
        )
    return table


def history_table(rows: Iterable[JSON]) -> Table:
    """``trigger history``: each decided slot, newest first, with the run it started or why
    it started none."""
    table = _table("SCHEDULED", "OUTCOME", "RUN OR WHY NOT")
    for item in rows:
        entry = _obj(item)
        # a slot that did not fire says why; one that did names its run
        why = slot_reason(_obj(entry.get("detail")))
        table.add_row(
            text_of(entry.get("scheduled_time")),
            styled(entry.get("outcome")),
            text_of(entry.get("execution_id") or why or ""),
        )
    return table


def wall_clock(instant: str, zone: str) -> str:
    """An ISO instant as the trigger's own zone reads it (its schedule is written in that
    zone); as given when it does not parse. ``-o json`` keeps the instants in UTC."""
    try:
        local = datetime.fromisoformat(instant).astimezone(ZoneInfo(zone))
    except (ValueError, ZoneInfoNotFoundError):
        return instant
    return local.strftime("%Y-%m-%d %H:%M:%S %Z")


def execution_details(doc: JSONObject, now: float, width: int = 60) -> RenderableType:
    """``describe execution``: the run, its nodes, its outputs and children."""
    head = _Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("Execution", text_of(doc.get("id")))
    head.add_row("Workflow", ref(doc))
    head.add_row("Status", styled(doc.get("status")))
    if doc.get("progress") is not None:
        head.add_row("Progress", f"{text_of(doc.get('progress'))}%")
    for label, key in (("Created", "created_at"), ("Started", "started_at")):
        head.add_row(label, text_of(doc.get(key)))
    if doc.get("finished_at") is not None:
        head.add_row("Finished", text_of(doc.get("finished_at")))
    took = span(doc.get("started_at"), doc.get("finished_at"), now)
    if took:
        head.add_row("Duration", took)
    if doc.get("parent_execution_id"):
        parent = text_of(doc.get("parent_execution_id"))
        if doc.get("parent_node_id"):
            parent += f" (node {text_of(doc.get('parent_node_id'))})"
        head.add_row("Parent", parent)
    if doc.get("retry_of"):
        head.add_row("Retry of", text_of(doc.get("retry_of")))
    if doc.get("error"):
        head.add_row("Error", Text(text_of(doc.get("error")), style="red"))
    head.add_row("Inputs", compact(doc.get("inputs"), width * 2))
    head.add_row("Outputs", compact(doc.get("outputs"), width * 2))

    # a skipped node's reason shares the column, not the red of an error
    nodes = _table("NODE", "STATUS", "ATTEMPTS", "DURATION", "ENGINE", "ERROR OR REASON", "OUTPUT")
    every = _obj(doc.get("nodes"))
    shown = _shown_nodes(every)
    for node_id in shown:
        node = _obj(every[node_id])
        nodes.add_row(
            printable(node_id),
            styled(node.get("status")),
            text_of(node.get("attempts")),
            span(node.get("started_at"), node.get("finished_at"), now),
            text_of(node.get("engine_id"))
            if not node.get("reused_from")
            else Text(f"kept from {short_id(node.get('reused_from'))}", style="dim"),
            Text(
                text_of(node.get("error")),
                style="dim" if node.get("status") == "skipped" else "red",
            ),
            compact(node.get("output"), width) if node.get("output") is not None else "",
        )
    parts: list[RenderableType] = [head, Text(""), nodes]
    if len(shown) < len(every):
        drawn = set(shown)
        left = Counter(
            text_of(_obj(value).get("status")) for key, value in every.items() if key not in drawn
        )
        said = ", ".join(f"{n} {status}" for status, n in sorted(left.items()))
        parts.append(
            Text(
                f"... and {len(every) - len(shown)} more nodes ({said}): "
                f"dagctl describe execution {text_of(doc.get('id'))} -o json shows every one",
                style="dim",
            )
        )
    children = doc.get("children")
    if isinstance(children, list) and children:
        tree = Tree(Text("Sub-workflows", style="bold"), guide_style="dim")
        _grow(tree, children)
        parts.append(Text(""))
        parts.append(tree)
    return Group(*parts)


NODES_SHOWN: Final = 500
"""Node rows (and sub-workflow runs) ``describe`` draws at most: a table of 20,000 took rich
16 s to lay out."""


def _shown_nodes(nodes: JSONObject) -> list[str]:
    """The nodes ``describe`` shows, in the run's order: all when they are few, else those
    that did not succeed or skip first (what someone looking at a run looks for), then the
    first of the rest, to ``NODES_SHOWN``."""
    if len(nodes) <= NODES_SHOWN:
        return list(nodes)
    settled = ("succeeded", "skipped")
    first = [k for k, v in nodes.items() if _obj(v).get("status") not in settled]
    chosen = set(first[:NODES_SHOWN])
    for key in nodes:
        if len(chosen) >= NODES_SHOWN:
            break
        chosen.add(key)
    return [k for k in nodes if k in chosen]


def _grow(tree: Tree, children: list[JSON]) -> None:
    """One branch per child execution: node, workflow, state, and its own children below;
    ``NODES_SHOWN`` of them at most on each branch."""
    if len(children) > NODES_SHOWN:
        more = len(children) - NODES_SHOWN
        children = children[:NODES_SHOWN]
    else:
        more = 0
    for child in children:
        if not isinstance(child, dict):
            tree.add(Text(text_of(child)))
            continue
        node = text_of(child.get("parent_node_id")) if child.get("parent_node_id") else ""
        item = child.get("parent_item")
        if node and isinstance(item, int):
            node += f"[{item}]"  # one child per item of a foreach node
        attempt = child.get("parent_attempt")
        if node and isinstance(attempt, int) and attempt > 1:
            node += f" attempt {attempt}"  # one child per attempt of a node retried
        label = Text.assemble(
            f"{node}  " if node else "",
            (ref(child), "cyan"),
            "  ",
            styled(child.get("status")),
            f"  {text_of(child.get('id'))}",
        )
        grandchildren = child.get("children")
        branch = tree.add(label)
        if isinstance(grandchildren, list):
            _grow(branch, grandchildren)
    if more:
        tree.add(Text(f"... and {more} more", style="dim"))


def _reference_shown(ref: JSON) -> str:
    """A sub-workflow node's reference as it reads in a spec: ``grade ^1.0``, or ``grade``
    for its latest version."""
    if isinstance(ref, str):
        return text_of(ref)
    ref = _obj(ref)
    if not ref:
        return ""
    version = ref.get("version")
    return text_of(ref.get("id")) + (f" {text_of(version)}" if version else "")


def _trigger_shown(trigger: JSON) -> str:
    """A spec's trigger in a few words: ``cron '30 2 * * *' Europe/Berlin`` or ``http
    /hooks/deploy``; anything else as its JSON."""
    item = _obj(trigger)
    if isinstance(item.get("cron"), str):
        zone = item.get("timezone")
        said = f"cron {item['cron']!r} {text_of(zone) if zone else 'UTC'}"
        if item.get("id"):
            said += f" (id {text_of(item.get('id'))})"
        return printable(said)
    http = _obj(item.get("http"))
    if isinstance(http.get("path"), str):
        return f"http {text_of(http['path'])}"
    return compact(trigger, 80)


def workflow_details(workflow: JSONObject) -> RenderableType:
    """``describe workflow``: its versions and the nodes of the version shown."""
    spec = _obj(workflow.get("spec"))
    head = _Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("Workflow", text_of(workflow.get("id", spec.get("id"))))
    head.add_row("Version", text_of(workflow.get("version", spec.get("version"))))
    name = workflow.get("name", spec.get("name"))
    if name:
        head.add_row("Name", text_of(name))
    if spec.get("description"):
        head.add_row("Description", text_of(spec.get("description")))
    labels = spec.get("labels")
    if isinstance(labels, dict) and labels:
        head.add_row("Labels", ", ".join(f"{text_of(k)}={text_of(v)}" for k, v in labels.items()))
    versions = workflow.get("versions")
    if isinstance(versions, list):
        head.add_row("Versions", ", ".join(text_of(v) for v in versions))
    for key in ("dependents", "dependencies"):
        value = workflow.get(key)
        if isinstance(value, list) and value:
            head.add_row(key.capitalize(), ", ".join(text_of(v) for v in value))
        elif value:
            head.add_row(key.capitalize(), compact(value, 120))
    triggers = spec.get("triggers")
    if isinstance(triggers, list) and triggers:
        head.add_row("Triggers", "; ".join(_trigger_shown(t) for t in triggers))
    nodes = _table("NODE", "KIND", "DEPENDS ON", "TRIGGER RULE")
    for item in _list(spec.get("nodes")):
        node = _obj(item)
        kind = next((k for k in ("lua", "workflow", "sleep") if k in node), "")
        if kind == "workflow":
            kind = f"workflow {_reference_shown(node.get('workflow'))}"
        elif kind == "sleep":
            kind = f"sleep {text_of(node.get('sleep'))}"
        if node.get("foreach") is not None:
            kind += " (foreach)"
        deps = node.get("depends_on")
        nodes.add_row(
            text_of(node.get("id")),
            kind,
            ", ".join(text_of(d) for d in deps) if isinstance(deps, list) else "",
            text_of(node.get("trigger_rule")),
        )
    return Group(head, Text(""), nodes)


# -- events ---------------------------------------------------------------------------------


def _subworkflow_message(kind: str, data: JSONObject) -> str:
    """In the parent's timeline: which child, for which item; in the child's: whose node."""
    item = f"item {data['item']}: " if isinstance(data.get("item"), int) else ""
    if data.get("parent_execution_id"):
        return (
            f"{item}child of {short_id(data.get('parent_execution_id'))} node {data.get('node_id')}"
        )
    target = f"{data.get('workflow_id')}@{data.get('version')}"
    if kind == "subworkflow.requested":
        return f"{item}asks for {target}"
    child = short_id(data.get("child_execution_id"))
    if kind == "subworkflow.started":
        return f"{item}child {child} ({target})"
    ended = f"{item}child {child} {text_of(data.get('status'))}"
    return f"{ended}: {data['error']}" if data.get("error") else ended


def _trigger_message(kind: str, data: JSONObject) -> str:
    """Which trigger, which slot (or hook path), and what came of it: the run it started, or
    why none (a run still going, a refusal, slots missed while down)."""
    slot = data.get("scheduled_time")
    which = f"{text_of(data.get('trigger_id'))} " + (
        f"slot {text_of(slot)}" if slot else f"POST {text_of(data.get('path'))}"
    )
    run = short_id(data.get("execution_id"))
    if kind == "trigger.fired":
        return f"{which}: run {run}" if run else which
    why = slot_reason(data) or ""
    if kind == "trigger.skipped" and run:
        why += f" ({run})"
    return f"{which}: {why}" if why else which


def event_message(event: JSONObject) -> str:
    """The few words that say what an event means, on one line: its control characters,
    newlines and tabs escaped."""
    return one_line(_event_message(event))


def _event_message(event: JSONObject) -> str:
    kind = text_of(event.get("type"))
    data = _obj(event.get("data"))
    if kind == "node.log":
        return f"{data.get('level')}: {_logged_text(data)}"
    # a foreach item's retry says which item
    of_item = f" of item {data['item']}" if isinstance(data.get("item"), int) else ""
    if kind == "node.retrying":
        return (
            f"attempt {data.get('next_attempt')}{of_item} in {data.get('delay_s')}s: "
            f"{data.get('error')}"
        )
    if kind == "subscriber.lagged":
        return f"missed {data.get('missed')} events (the stream fell behind)"
    if kind == "node.progress":
        # its outputs are checkpoints for a failover, not for reading here
        return f"{text_of(data.get('done'))}/{text_of(data.get('items'))} items"
    if kind.startswith("subworkflow."):
        return _subworkflow_message(kind, data)
    if kind.startswith("trigger."):
        return _trigger_message(kind, data)
    resumed = data.get("resumed")
    if kind == "execution.started" and isinstance(resumed, list) and resumed:
        return f"resumed, {len(resumed)} node{'s' if len(resumed) != 1 else ''} done already"
    if kind == "node.started" and resumed is True:
        left = data.get("remaining_s")
        return "resumed" + (f", {duration(left)} left" if isinstance(left, int | float) else "")
    kept = data.get("resumed_items")
    if kind == "node.started" and isinstance(kept, int) and not isinstance(kept, bool):
        # a foreach node taken up elsewhere: what the engine before it had done is not run again
        return f"resumed, {kept} of {text_of(data.get('items'))} items done already"
    if data.get("error"):
        return text_of(data.get("error"))
    if kind == "node.skipped":
        return text_of(data.get("reason"))
    if kind == "node.started" and (event.get("attempt") or 1) not in (0, 1):
        return f"attempt {event.get('attempt')}{of_item}"
    if kind.startswith("engine."):
        return f"{data.get('address')}" + (f" ({data['reason']})" if data.get("reason") else "")
    parts = []
    took = data.get("duration_ms")
    if isinstance(took, int | float) and not isinstance(took, bool):
        parts.append(duration(took / 1000))
    if kind == "node.succeeded" and data.get("reused_from"):
        parts.append(f"kept from {short_id(data.get('reused_from'))}")
    if kind == "node.succeeded" and "output" in data:
        parts.append(compact(data.get("output"), 60))
    elif kind == "execution.queued" and data.get("retry_of"):
        parts.append(f"retry of {short_id(data.get('retry_of'))}")
    elif kind in {f"execution.{s}" for s in EXECUTION_TERMINAL} and data.get("outputs"):
        parts.append("outputs " + compact(data.get("outputs"), 60))
    elif kind == "execution.queued" and data.get("inputs"):
        parts.append("inputs " + compact(data.get("inputs"), 60))
    return "  ".join(parts)


def _take_items(node: NodeProgress, done: JSON, total: JSON) -> None:
    """A foreach node's items done, from its node.progress or its document's record; never
    back (an event older than the document read)."""
    if isinstance(done, int) and isinstance(total, int) and total > 0 and done >= 0:
        if total != node.items_total:
            node.items_total, node.items_done = total, done
        else:
            node.items_done = max(node.items_done, done)


def _logged_text(data: JSONObject) -> str:
    """A log line's message, after the foreach item that logged it (``item 3: ...``, as a
    failed item's error says it)."""
    item = data.get("item")
    return (f"item {item}: " if isinstance(item, int) else "") + str(data.get("message"))


def event_line(event: JSONObject) -> str:
    """time, type, workflow@version, execution (short), node, message: one line an event."""
    where = event.get("node_id") or (
        event.get("engine_id") if text_of(event.get("type")).startswith("engine.") else None
    )
    cells = [
        pad(clock(event.get("time")), 13),
        pad(text_of(event.get("type")), 20),
        pad(ref(event) or "-", 20),
        pad(short_id(event.get("execution_id")) or "-", 8),
        pad(text_of(where) or "-", 12),
        event_message(event),
    ]
    return " ".join(cells).rstrip()


# -- log lines ------------------------------------------------------------------------------

LEVEL_STYLES: Final = {
    "debug": "dim",
    "warn": "yellow",
    "warning": "yellow",
    "error": "red",
    "critical": "bold red",
}


def log_source(event: JSONObject) -> str:
    """Where a log line comes from: its node, ``[item]`` for a foreach item (its index), and
    the attempt when it is not the first (``each[2] attempt 2``)."""
    data = _obj(event.get("data"))
    where = text_of(event.get("node_id")) or "execution"
    item = data.get("item")
    if isinstance(item, int) and not isinstance(item, bool):
        where += f"[{item}]"
    attempt = event.get("attempt")
    if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 1:
        where += f" attempt {attempt}"
    return one_line(where)


def log_line(event: JSONObject, width: int = 0) -> Text:
    """time, where (``log_source``, padded to ``width``), level, message: a ``node.log``
    event as one line, styled for a terminal (its ``plain`` text elsewhere). The message's
    newlines and tabs are escaped as ``event_line`` escapes them, so a line is a record."""
    data = _obj(event.get("data"))
    level = one_line(text_of(data.get("level")) or "info")
    message = data.get("message")
    return Text.assemble(
        (pad(clock(event.get("time")), 13), "dim"),
        "  ",
        pad(log_source(event), width),
        "  ",
        (pad(level, 5), LEVEL_STYLES.get(level, "")),
        "  ",
        one_line("" if message is None else str(message)),
    )


class LogLines:
    """A run's log lines written as they come (``dagctl logs``): the source column as wide
    as the run's node ids, widening when an item or attempt needs more; through ``console``
    (styles) on a terminal, as plain text without one."""

    def __init__(self, out: TextIO, console: Console | None, node_ids: Iterable[str]) -> None:
        self.out = out
        self.console = console
        fitted = [cell_len(one_line(node_id)) for node_id in node_ids]
        self.width = min(max([12, *fitted]), MAX_SOURCE_WIDTH)
        self.count = 0

    def write(self, event: JSONObject) -> None:
        self.width = max(self.width, cell_len(log_source(event)))
        line = log_line(event, self.width)
        line.rstrip()
        self.count += 1
        if self.console is not None:
            self.console.print(line, soft_wrap=True)
        else:
            self.out.write(line.plain + "\n")
        self.out.flush()


MAX_SOURCE_WIDTH: Final = 32
"""The widest the source column starts (a longer node id widens it when it logs)."""


@dataclass(slots=True)
class SubRuns:
    """The sub-workflow runs a run's timeline says it started (``subworkflow.started``), for
    ``dagctl logs`` to say where their lines are: each run's lines are its own."""

    count: int = 0
    first: list[tuple[str, str]] = field(default_factory=list)
    """Up to ``SUB_RUNS_SHOWN`` of them: id, and a line of id, node[item], workflow@version."""

    def take(self, event: JSONObject) -> None:
        if event.get("type") != "subworkflow.started":
            return
        data = _obj(event.get("data"))
        child = data.get("child_execution_id")
        if not isinstance(child, str):
            return
        self.count += 1
        if len(self.first) < SUB_RUNS_SHOWN:
            line = (
                f"  {printable(child)}  {log_source(event)}  "
                f"{text_of(data.get('workflow_id'))}@{text_of(data.get('version'))}"
            )
            self.first.append((child, line))

    def lines(self, execution_id: str, kept: Collection[str] | None = None) -> list[str]:
        """``kept``: the child ids the ended run's document still lists; one the timeline
        names besides is of a workflow deleted since, whose runs went with it."""
        if not self.count:
            return []
        runs = "a sub-workflow run" if self.count == 1 else f"{self.count} sub-workflow runs"
        said = [
            f"{printable(execution_id)} started {runs}, whose log lines are their own: "
            "dagctl logs CHILD_ID",
            *(
                line
                + (
                    "  (deleted with its workflow)"
                    if kept is not None and child not in kept
                    else ""
                )
                for child, line in self.first
            ),
        ]
        if self.count > len(self.first):
            said.append(
                f"  ... and {self.count - len(self.first)} more "
                f"(dagctl describe execution {printable(execution_id)})"
            )
        return said


SUB_RUNS_SHOWN: Final = 5


# -- a run's progress -----------------------------------------------------------------------


@dataclass(slots=True)
class NodeProgress:
    status: str = "pending"
    attempts: int = 0
    started_at: JSON = None
    finished_at: JSON = None
    detail: str = ""
    items_done: int = 0
    items_total: int = 0
    """A foreach node's items that succeeded, of how many, as its node.progress said."""

    def share(self) -> float:
        """What the node counts for toward its run's progress: 1 once ended, its items' share
        while a foreach node runs."""
        if self.status in NODE_DONE:
            return 1.0
        if self.status == "running" and self.items_total > 0:
            return min(self.items_done, self.items_total) / self.items_total
        return 0.0


@dataclass
class RunProgress:
    """The nodes of one run, folded from its document and its events (either, any order)."""

    execution_id: str
    workflow: str = ""
    status: str = "queued"
    started_at: JSON = None
    finished_at: JSON = None
    error: str | None = None
    nodes: dict[str, NodeProgress] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Held while folding and drawing: a live display redraws from its own thread."""

    @property
    def finished(self) -> bool:
        return self.status in EXECUTION_TERMINAL

    def done_count(self) -> int:
        return sum(1 for n in self.nodes.values() if n.status in NODE_DONE)

    def filled(self) -> float:
        """How many nodes' worth of the bar is filled: those ended, and a running foreach
        node's share of its items done (one at 450 of 1000 items fills 0.45 of its part)."""
        with self.lock:
            return self._filled()

    def _filled(self) -> float:
        return sum(node.share() for node in self.nodes.values())

    def sync(self, doc: JSONObject) -> list[tuple[str, str]]:
        """Take what the document says; returns (node or "execution", new status) changes."""
        changes: list[tuple[str, str]] = []
        with self.lock:
            if doc.get("workflow_id"):
                self.workflow = ref(doc)
            status = text_of(doc.get("status")) or self.status
            moved = status != self.status
            if moved and status not in EXECUTION_TERMINAL:
                changes.append(("execution", status))  # a start comes before its nodes'
            if moved:
                self.status = status
            self.started_at = doc.get("started_at") or self.started_at
            self.finished_at = doc.get("finished_at") or self.finished_at
            error = doc.get("error")
            self.error = str(error) if error is not None else self.error
            for node_id, value in _obj(doc.get("nodes")).items():
                node_doc = _obj(value)
                node = self.nodes.setdefault(node_id, NodeProgress())
                new = text_of(node_doc.get("status")) or node.status
                if new != node.status:
                    changes.append((node_id, new))
                    node.status = new
                attempts = node_doc.get("attempts")
                if isinstance(attempts, int):
                    node.attempts = max(node.attempts, attempts)
                node.started_at = node_doc.get("started_at") or node.started_at
                node.finished_at = node_doc.get("finished_at") or node.finished_at
                _take_items(node, node_doc.get("items_done"), node_doc.get("items_total"))
                if node_doc.get("error"):
                    node.detail = text_of(node_doc.get("error"))
            if moved and status in EXECUTION_TERMINAL:
                changes.append(("execution", status))  # an end after its nodes' ends
        return changes

    def apply(self, event: JSONObject) -> None:
        kind = text_of(event.get("type"))
        family, _, what = kind.partition(".")
        data = _obj(event.get("data"))
        with self.lock:
            if event.get("execution_id") != self.execution_id:
                return
            if not self.workflow and event.get("workflow_id"):
                self.workflow = ref(event)
            if family == "execution":
                if what == "started":
                    self.started_at = self.started_at or event.get("time")
                if what in ("started", *EXECUTION_TERMINAL) and not self.finished:
                    self.status = "running" if what == "started" else what
                if what in EXECUTION_TERMINAL:
                    self.finished_at = event.get("time")
                    if data.get("error"):
                        self.error = text_of(data.get("error"))
                return
            node_id = event.get("node_id")
            if family != "node" or not isinstance(node_id, str):
                return
            node = self.nodes.setdefault(node_id, NodeProgress())
            attempt = event.get("attempt")
            if isinstance(attempt, int):
                node.attempts = max(node.attempts, attempt)
            if what in ("started", "retrying"):
                if node.status not in NODE_DONE:
                    node.status = "running"
                node.started_at = node.started_at or event.get("time")
                if self.status == "queued":
                    self.status = "running"
            elif what in NODE_DONE:
                if node.status not in NODE_DONE:
                    node.status = what
                    node.finished_at = event.get("time")
            elif what == "progress":
                _take_items(node, data.get("done"), data.get("items"))
            if what != "started" and what != "succeeded":
                message = event_message(event)
                if message:
                    node.detail = message
            elif what == "succeeded":
                node.detail = ""

    def render(self, now: float, height: int | None = None) -> RenderableType:
        """The header, a bar and a row per node, in ``height`` lines when given: a run with
        more nodes than that shows its failed and running ones, then how many more are in
        each state (a row per node of 10,000, 8 times a second, is seconds of CPU a second,
        and a table no terminal shows)."""
        with self.lock:
            total = len(self.nodes)
            counts: dict[str, int] = {}
            for node in self.nodes.values():
                counts[node.status] = counts.get(node.status, 0) + 1
            done = sum(counts.get(state, 0) for state in NODE_DONE)
            head = Text.assemble(
                (self.workflow or "execution", "bold"),
                "  ",
                # the whole id: what cancel and describe take (its tail alone is ambiguous)
                (printable(self.execution_id), "dim"),
                "  ",
                styled(self.status),
                f"  {done}/{total} nodes",
                f"  {span(self.started_at, self.finished_at, now)}",
            )
            rows = None if height is None else max(height - ROWS_AROUND, MIN_ROWS)
            shown: Iterable[tuple[str, NodeProgress]] = self.nodes.items()
            rest = ""
            if rows is not None and total > rows:
                shown, rest = self._foremost(rows - 1, counts)
            table = _table("", "NODE", "STATE", "ATTEMPT", "TIME", "DETAIL")
            for node_id, node in shown:
                table.add_row(
                    STATE_MARKS.get(node.status, " "),
                    printable(node_id),
                    styled(node.status),
                    str(node.attempts) if node.attempts else "",
                    span(node.started_at, node.finished_at, now),
                    Text(node.detail[:120], style="red" if node.status == "failed" else "dim"),
                )
            # a grid puts the bar on a line of its own: a bare ProgressBar ends no line
            top = _Table.grid(padding=(0, 2))
            top.add_row(head)
            bar = ProgressBar(total=max(total, 1), completed=self._filled(), width=40)
            top.add_row(bar)
            if rest:
                return Group(top, table, Text(rest, style="dim"))
            return Group(top, table)

    def _foremost(
        self, rows: int, counts: dict[str, int]
    ) -> tuple[list[tuple[str, NodeProgress]], str]:
        """Up to ``rows`` nodes worth a row (failed first, then running, in the run's order)
        and a line counting the others by state."""
        picked: list[tuple[str, NodeProgress]] = []
        for wanted in FOREMOST:
            if counts.get(wanted, 0) and len(picked) < rows:
                for item in self.nodes.items():
                    if item[1].status == wanted:
                        picked.append(item)
                        if len(picked) >= rows:
                            break
        left = dict(counts)
        for _, node in picked:
            left[node.status] -= 1
        hidden = sum(left.values())
        states = sorted(((n, s) for s, n in left.items() if n), key=lambda ns: (-ns[0], ns[1]))
        if not states:
            return picked, ""
        if len(states) == 1:
            return picked, f"... {hidden:,} more {states[0][1]}"
        return picked, f"... {hidden:,} more: " + ", ".join(f"{n:,} {s}" for n, s in states)


ROWS_AROUND: Final = 5
"""Lines of a terminal the live display leaves to its header, bar, table heading, the line
counting the nodes not shown, and the cursor's line."""
MIN_ROWS: Final = 3
FOREMOST: Final = ("failed", "running")
"""Node states shown first when not every node fits."""


class ProgressLines:
    """Plain progress, one line a change, for output that is not a terminal."""

    def __init__(self, progress: RunProgress, out: TextIO) -> None:
        self.progress = progress
        self.out = out
        self.width = 12
        self.t0: float | None = None

    def fit(self, labels: Iterable[str]) -> None:
        """Make the label column as wide as the widest of ``labels`` (node ids)."""
        self.width = max([cell_len(one_line(label)) for label in labels] + [self.width])

    def _write(self, when: float | None, label: str, what: str, detail: str = "") -> None:
        if when is not None and self.t0 is None:
            self.t0 = when
        stamp = f"{when - self.t0:8.3f}s" if when is not None and self.t0 is not None else " " * 9
        # one line a record, newlines and tabs escaped as ``events`` escapes them: a script's
        # message or error read by a script (| grep) cannot draw a line of its own
        label, what = one_line(label), one_line(what)
        self.width = max(self.width, cell_len(label))
        line = f"{stamp}  {pad(label, self.width)}  {pad(what, 10)} {one_line(detail)}".rstrip()
        self.out.write(line + "\n")
        self.out.flush()

    def header(self) -> None:
        p = self.progress
        said = f"execution {p.execution_id} ({p.workflow or 'workflow'})"
        self.out.write(one_line(said) + "\n")
        self.out.flush()

    def event(self, event: JSONObject) -> None:
        self.progress.apply(event)
        kind = text_of(event.get("type"))
        if event.get("execution_id") != self.progress.execution_id and kind != "subscriber.lagged":
            return
        what = kind.split(".", 1)[-1]
        if kind.startswith("subworkflow."):
            what = f"sub-workflow {what}"
        if kind == "node.log":
            data = _obj(event.get("data"))
            what = f"log:{data.get('level')}"
            detail = _logged_text(data)
        else:
            detail = event_message(event)
        label = text_of(event.get("node_id")) or "execution"
        self._write(timestamp(event.get("time")), label, what, detail)

    def changes(self, changes: list[tuple[str, str]], now: float) -> None:
        for label, status in changes:
            if status == "pending":
                continue
            detail = ""
            node = self.progress.nodes.get(label)
            if node is not None and status in ("failed", "blocked", "skipped", "cancelled"):
                detail = node.detail
            self._write(now, label, status, detail)


def slot_reason(detail: JSONObject) -> str | None:
    """Why a trigger's slot did not fire, from its history row's detail; a missed row stands
    for every slot of an outage: how many, from when to when, and the policy that decided."""
    count = detail.get("count")
    if isinstance(count, int):
        at_least = "" if detail.get("exact", True) else "at least "
        return (
            f"{at_least}{count} slots from {text_of(detail.get('first_missed'))} to "
            f"{text_of(detail.get('last_missed'))} (catchup {text_of(detail.get('catchup'))})"
        )
    why = detail.get("error") or detail.get("reason")
    return text_of(why) if why is not None else None
