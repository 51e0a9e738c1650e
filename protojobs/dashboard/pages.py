"""One function per page or action: gather data through `ops`, render a template."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from protojobs.dashboard.history import growing
from protojobs.model import envelope, names
from protojobs.ops import browse, dlq, pause, schedules
from protojobs.ops.dlq import Entry

if TYPE_CHECKING:
    from protojobs.dashboard.web import Dashboard

PAGE = 50
WAITING = 20  # jobs listed per partition and tier on a queue's page


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


# --- overview -------------------------------------------------------------------------------


def overview(dash: Dashboard, request: Request, who: str) -> Response:
    data = browse.overview(dash.browser)
    dash.history.add(time.time(), data)
    cluster = dash.browser.cluster()
    series = dash.history.series()
    problems = []
    for name, q in data["queues"].items():
        if growing(series.get(name, {}).get("lag", [])):
            problems.append(f"queue {name}: lag growing ({q['lag']} jobs behind)")
    if not data["members"] and any(q["depth"] for q in data["queues"].values()):
        problems.append("no worker is in the consumer group, and jobs are waiting")
    if cluster["under_replicated"]:
        problems.append(f"{len(cluster['under_replicated'])} partition(s) under-replicated")
    problems += worker_problems(browse.workers(dash.browser))
    paused = pause.paused_queues(dash.settings)
    return dash.render(request, "overview.html", who, data=data, cluster=cluster, series=series,
                       problems=problems, paused=paused)


def worker_problems(rows: list[dict[str, Any]]) -> list[str]:
    """What the workers' presence records say is wrong: wedged lanes, dead threads, lost workers."""
    out = []
    for w in rows:
        name = f"worker {w.get('host')} pid {w.get('pid')}"
        if w["lost"]:
            out.append(f"{name}: lost (no heartbeat for {w['age']:.0f}s)")
            continue
        for queue, (hung, limit) in (w.get("wedged") or {}).items():
            out.append(f"{name}: queue {queue} wedged ({hung} handlers hung past their timeout, limit {limit})")
        for thread, why in (w.get("dead_threads") or {}).items():
            out.append(f"{name}: {thread} thread dead: {why}")
    return out


def workers(dash: Dashboard, request: Request, who: str) -> Response:
    rows = browse.workers(dash.browser)
    return dash.render(request, "workers.html", who, workers=rows, problems=worker_problems(rows))


# --- a queue --------------------------------------------------------------------------------


def _owners(members: list[dict[str, Any]]) -> dict[str, str]:
    return {tp: f"{m['client_id']} ({m['host'].lstrip('/')})" for m in members for tp in m["assignment"]}


def _job_rows(msgs: list[Any], queue: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for msg in msgs:
        try:
            env = envelope.decode(msg.value())
        except (envelope.EnvelopeError, TypeError, ValueError, KeyError):
            rows.append({"offset": msg.offset(), "partition": msg.partition(), "topic": msg.topic(), "bad": True})
            continue
        if queue is not None and env.queue != queue:
            continue
        rows.append({"offset": msg.offset(), "partition": msg.partition(), "topic": msg.topic(), "id": env.id,
                     "job": env.job, "attempt": env.attempt, "due": env.available_at})
    return rows


def queue(dash: Dashboard, request: Request, who: str) -> Response:
    name = request.path_params["name"]
    if name not in dash.settings.queues:
        return HTMLResponse(f"no queue {name!r}", 404)
    settings, b = dash.settings, dash.browser
    prefix, group = settings.kafka.topic_prefix, settings.kafka.group_id
    topic = names.queue_topic(prefix, name)
    offsets = b.offsets(group, [topic]).get(topic, {})
    owners = _owners(browse.admin.group_members(b.client, group))
    parts = [{"partition": p, "low": o.low, "high": o.high, "committed": o.committed, "lag": o.lag,
              "owner": owners.get(f"{topic}[{p}]", "-")} for p, o in sorted(offsets.items())]
    waiting = []
    for p, o in sorted(offsets.items()):
        start = max(o.low, o.committed if o.committed is not None else o.low)
        waiting += _job_rows(b.read_range(topic, p, start, WAITING, end=o.high))
    tiers = {names.delay_topic(prefix, t): t for t in settings.tiers_ms}
    tier_offsets = b.offsets(names.router_group(group), tiers)
    delayed = []
    for t, parts_of in tier_offsets.items():
        for p, o in sorted(parts_of.items()):
            start = max(o.low, o.committed if o.committed is not None else o.low)
            for row in _job_rows(b.read_range(t, p, start, WAITING, end=o.high), queue=name):
                delayed.append(row | {"tier": tiers[t]})
    # a job hopping from tier to tier (the router re-sends it for what remains) can be in two
    # records until the router commits the older one: show it once
    once: dict[Any, dict[str, Any]] = {}
    for r in delayed:
        once.setdefault(r.get("id") or (r["topic"], r["partition"], r["offset"]), r)
    delayed = list(once.values())
    delayed.sort(key=lambda r: r.get("due", 0))
    paused = name in pause.paused_queues(settings)
    return dash.render(request, "queue.html", who, name=name, topic=topic, parts=parts, waiting=waiting,
                       delayed=delayed, paused=paused, page_size=WAITING)


def record(dash: Dashboard, request: Request, who: str) -> Response:
    """The record explorer: `topic`, `partition`, `offset` (a page of `count` records from it)."""
    qp = request.query_params
    topic = qp.get("topic", "")
    known = ({names.queue_topic(dash.settings.kafka.topic_prefix, q) for q in dash.settings.queues}
             | {names.delay_topic(dash.settings.kafka.topic_prefix, t) for t in dash.settings.tiers_ms}
             | set(dlq.dead_letter_topics(dash.settings)))
    if topic not in known:
        return HTMLResponse(f"not a topic of this configuration: {topic!r}", 404)
    try:
        partition, offset = int(qp.get("partition", "0")), int(qp.get("offset", "0"))
        count = max(1, min(int(qp.get("count", "10")), 100))
    except ValueError:
        return HTMLResponse("partition, offset and count are whole numbers", 400)
    offsets = dash.browser.offsets(dash.settings.kafka.group_id, [topic]).get(topic, {})
    bounds = offsets.get(partition)
    start = max(offset, bounds.low) if bounds else offset
    msgs = dash.browser.read_range(topic, partition, start, count)
    records = []
    for msg in msgs:
        value = msg.value() or b""
        try:
            decoded: Any = envelope.to_dict(envelope.decode(value))
        except (envelope.EnvelopeError, TypeError, ValueError, KeyError):
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value[:4096].decode("utf-8", "replace")
        hdrs = [(str(k), bytes(v or b"").decode("utf-8", "replace")) for k, v in cast(Any, msg.headers() or [])]
        records.append({"offset": msg.offset(), "timestamp": msg.timestamp()[1], "decoded": decoded,
                        "key": (msg.key() or b"").decode("utf-8", "replace"), "headers": hdrs})
    nxt = records[-1]["offset"] + 1 if records else None
    return dash.render(request, "record.html", who, topic=topic, partition=partition, offset=start, count=count,
                       records=records, bounds=bounds, next_offset=nxt,
                       partitions=sorted(offsets))


def pause_queue(dash: Dashboard, request: Request, who: str, form: dict[str, Any]) -> Response:
    name = request.path_params["name"]
    paused = form.get("paused") == "1"
    pause.set_paused(dash.settings, name, paused, who)
    dash.action(who, "pause" if paused else "resume", queue=name)
    return RedirectResponse(f"{_root(request)}/queues/{name}", 303)


# --- dead letters ---------------------------------------------------------------------------


def _time_ms(text: str | None) -> int | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _filter(params: Any) -> browse.DeadLetterFilter:
    return browse.DeadLetterFilter(queue=params.get("queue") or None, job=params.get("job") or None,
                                   error=params.get("error") or None, since_ms=_time_ms(params.get("since")),
                                   until_ms=_time_ms(params.get("until")), text=params.get("text") or None)


def _cursor(text: str | None) -> dict[tuple[str, int], int] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        topic, _, rest = part.rpartition(":")
        topic, _, partition = topic.rpartition(":")
        if topic and partition.isdigit() and rest.isdigit():
            out[(topic, int(partition))] = int(rest)
    return out or None


def dead_letters(dash: Dashboard, request: Request, who: str) -> Response:
    qp = request.query_params
    flt = _filter(qp)
    page = browse.dead_letter_page(dash.browser, flt, _cursor(qp.get("cursor")), PAGE)
    filters = {k: qp.get(k, "") for k in ("queue", "job", "error", "since", "until", "text")}
    more = None
    if page.cursor is not None:
        more = urlencode({**{k: v for k, v in filters.items() if v},
                          "cursor": ",".join(f"{t}:{p}:{o}" for (t, p), o in sorted(page.cursor.items()))})
    return dash.render(request, "dead_letters.html", who, page=page, filters=filters, more=more,
                       queues=sorted(dash.settings.queues), message=qp.get("message"))


def dead_letter(dash: Dashboard, request: Request, who: str) -> Response:
    pp = request.path_params
    entry = browse.dead_letter(dash.browser, pp["topic"], pp["partition"], pp["offset"])
    if entry is None:
        return HTMLResponse("no such dead-letter record", 404)
    return dash.render(request, "dead_letter.html", who, e=entry, full=dlq.to_json(entry))


def _refs(dash: Dashboard, refs: list[str]) -> list[Entry]:
    out = []
    for ref in refs:
        topic, _, rest = ref.rpartition("/")
        topic, _, partition = topic.rpartition("/")
        if partition.isdigit() and rest.isdigit():
            entry = browse.dead_letter(dash.browser, topic, int(partition), int(rest))
            if entry is not None:
                out.append(entry)
    return out


def replay(dash: Dashboard, request: Request, who: str, form: dict[str, Any]) -> Response:
    if form.get("all") == "1":
        flt = _filter(form)
        report = browse.replay_matching(dash.browser, flt)
        dash.action(who, "replay matching", filter=flt.__dict__, replayed=[e.job_id for e in report.replayed])
    else:
        entries = _refs(dash, list(form.get("ref") or []))
        report = dlq.replay(dash.settings, entries)
        dash.action(who, "replay", refs=form.get("ref"), replayed=[e.job_id for e in report.replayed])
    parts = [f"replayed {len(report.replayed)}"]
    parts += [f"skipped {e.job_id}: {why}" for e, why in report.skipped]
    parts += [f"cannot replay {e.job_id}: {why}" for e, why in report.unreplayable + report.failed]
    back = form.get("back") or f"{_root(request)}/dead-letters"
    sep = "&" if "?" in back else "?"
    return RedirectResponse(f"{back}{sep}{urlencode({'message': dash.clean('; '.join(parts))})}", 303)


def purge(dash: Dashboard, request: Request, who: str, form: dict[str, Any]) -> Response:
    queue = form.get("queue") or None
    try:
        topics = dlq.purge_targets(dash.settings, queue)
    except (dlq.DlqError, ValueError) as exc:
        return RedirectResponse(f"{_root(request)}/dead-letters?{urlencode({'message': str(exc)})}", 303)
    counts = {t: dlq.record_count(dash.browser.client, t) for t in topics}
    if form.get("confirm") != "purge":
        return dash.render(request, "purge.html", who, queue=queue, counts=counts)
    deleted = sum(dlq.purge(dash.browser.client, t) for t in topics)
    dash.action(who, "purge", queue=queue, topics=topics, deleted=deleted)
    return RedirectResponse(f"{_root(request)}/dead-letters?{urlencode({'message': f'purged {deleted}'})}", 303)


# --- schedules ------------------------------------------------------------------------------


def schedules_page(dash: Dashboard, request: Request, who: str) -> Response:
    listing = schedules.listing(dash.settings)
    upcoming = {}
    for row in listing["schedules"]:
        try:
            up = schedules.next_fires(dash.settings, row["name"], 3)
        except (ValueError, KeyError):
            continue
        upcoming[row["name"]] = {"tz": up.tz, "times": [_in_zone(t, up.tz) for t in up.times]}
    return dash.render(request, "schedules.html", who, listing=listing, upcoming=upcoming,
                       message=request.query_params.get("message"))


def _in_zone(ms: int, tz: str) -> str:
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def schedule_action(dash: Dashboard, request: Request, who: str, form: dict[str, Any]) -> Response:
    name, verb = request.path_params["name"], request.path_params["verb"]
    if verb not in ("pause", "resume", "remove"):
        return HTMLResponse(f"unknown action {verb!r}", 404)
    try:
        schedules.control(dash.settings, verb, name)
        message = f"{verb}d {name}" if verb != "remove" else f"removed {name}"
    except schedules.ScheduleError as exc:
        message = str(exc)
    dash.action(who, f"schedule {verb}", schedule=name, result=message)
    return RedirectResponse(f"{_root(request)}/schedules?{urlencode({'message': message})}", 303)
