"""The printed table and the PNG plots of a bench run (from the results dict / latest.json).

    python bench/report.py [bench/results/latest.json]            # re-print and re-plot a saved run
    python bench/report.py --readme [bench/results/latest.json]   # rewrite README's table from it

`--readme` replaces what stands between the README's `<!-- bench-table:start -->` and
`<!-- bench-table:end -->` markers with the table and the per-stage cost table of the run:
the README's figures are never typed by hand. Targets are issue 15's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _f(x: Any, fmt: str = ",.0f") -> str:
    return format(x, fmt) if isinstance(x, int | float) else "-"


def _check(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


SCENARIOS = ("dispatch", "drain", "latency", "delay", "cost", "peers", "profile")


def _scenarios(r: dict[str, Any]) -> dict[str, Any]:
    """A scenario that crashed holds its error text: make it a dict, so every row renders."""
    return {k: (v if k not in SCENARIOS or isinstance(v, dict) else {}) for k, v in r.items()}


def _latency_row(rate: str, v: Any) -> tuple[str, str, str, str, str, str]:
    p = v.get("protojobs", {}) if isinstance(v, dict) else {"error": str(v)[:80]}
    if "p99_ms" not in p:
        return (f"3 latency @ {rate}/s", p.get("error", "-"), "", "", "", "")
    raw = v.get("raw", {})
    ok = (v.get("p99_ratio") or 99) <= 2
    return (f"3 latency @ {int(rate):,}/s p50/p99/max ms",
            f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f} / {p['max_ms']:.1f}",
            f"{raw.get('p50_ms', 0):.1f} / {raw.get('p99_ms', 0):.1f} / {raw.get('max_ms', 0):.1f}",
            _f(v.get("p99_ratio"), ".2f"), "p99 <= 2x raw", _check(ok))


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    r = _scenarios(r)
    out = []
    out += _core_rows(r, "")
    three = r.get("three_nodes")
    if isinstance(three, dict) and three.get("error"):
        out.append(("3 nodes (RF 3, min ISR 2, acks=all)", str(three["error"])[:80], "", "", "", ""))
    elif isinstance(three, dict):
        sub = {k: (three.get(k) if isinstance(three.get(k), dict) else {}) for k in ("dispatch", "drain")}
        out += _core_rows(sub, "3 nodes (RF 3, min ISR 2): ")
    out += _other_rows(r)
    return out


def _core_rows(r: dict[str, Any], prefix: str) -> list[tuple[str, str, str, str, str, str]]:
    """The dispatch and drain rows (of the 1-node run, or of the 3-node run with `prefix`)."""
    out = []
    d = r.get("dispatch", {})
    if "protojobs" in d:
        p, raw = d["protojobs"], d["raw"]
        ok = d["ratio"] >= 0.5 and p["jobs_s"] >= 200_000
        out.append((f"1 dispatch_many, {d['jobs']:,} jobs ({d['record_bytes']} B records)",
                    f"{_f(p['jobs_s'])} jobs/s, {_f(p['mb_s'], '.1f')} MB/s",
                    f"{_f(raw['jobs_s'])} jobs/s, {_f(raw['mb_s'], '.1f')} MB/s", _f(d["ratio"], ".2f"),
                    ">= 0.5x raw and >= 200k/s", _check(ok)))
        c = d.get("concurrent", {})
        if "jobs_s" in c:
            out.append((f"1 dispatch() from {c['threads']} threads: acks/s, ack p50/p99/max ms",
                        f"{_f(c['jobs_s'])} jobs/s, {c['p50_ms']:.1f} / {c['p99_ms']:.1f} / {c['max_ms']:.1f}",
                        "", "", ">= 20k acks/s", _check(c["jobs_s"] >= 20_000)))
        elif c:
            out.append(("1 dispatch() from 100 threads", str(c.get("error", "?"))[:80], "", "", "", ""))
    elif d:
        out.append(("1 dispatch", d.get("error", "?"), "", "", "", ""))
    s = r.get("drain", {})
    if "raw" in s:
        raw = s["raw"].get("jobs_s")
        for name, label, target in (("protojobs_1p", "1 process", ">= 0.6x raw and >= 100k/s"),
                                    ("protojobs_1p_novalidate", "1 process, validate_on_consume=false", ""),
                                    ("protojobs_2p", "2 processes", "")):
            v = s.get(name, {})
            rate = v.get("jobs_s")
            ok = (v.get("ratio") or 0) >= 0.6 and (rate or 0) >= 100_000 if target else None
            out.append((f"2 drain {s['jobs']:,} no-op jobs, {label}",
                        f"{_f(rate)} jobs/s" if rate else v.get("error", "-"),
                        f"{_f(raw)} jobs/s", _f(v.get("ratio"), ".2f"), target, _check(ok)))
        eo = s.get("protojobs_1p_exactly_once", {})
        ratio = s.get("exactly_once_vs_at_least_once")
        out.append(("2 drain, exactly-once queue, 1 process",
                    f"{_f(eo['jobs_s'])} jobs/s" if eo.get("jobs_s") else str(eo.get("error", "-"))[:80],
                    f"{_f(raw)} jobs/s", f"{_f(ratio, '.2f')} of at-least-once", ">= 0.5x at-least-once",
                    _check(ratio >= 0.5 if ratio else None)))
    return [(prefix + row[0], *row[1:]) for row in out]  # type: ignore[misc]


def _other_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    out = [_latency_row(rate, v) for rate, v in r.get("latency", {}).items()]
    dl = r.get("delay", {})
    if "router_ready_s" in dl:
        out.append(("4 delay router start-up (group join), measured apart: one 200 ms job until done",
                    f"{dl['router_ready_s']:.2f} s", "", "", "", "-"))
    for label, v in dl.items():
        if isinstance(v, dict) and "p99_ms" in v:
            bound = 250 if label == "1s" else 1000  # issue 15: 250 ms for a 1 s delay, 1 s for every delay
            ok = v["early"] == 0 and v["p99_ms"] <= bound
            out.append((f"4 delay {label}, {v['n']} jobs: lateness p50/p99/max ms, early",
                        f"{v['p50_ms']:.0f} / {v['p99_ms']:.0f} / {v['max_ms']:.0f}, early {v['early']}",
                        "", "", f"0 early, p99 <= {'250 ms' if bound == 250 else '1 s'}", _check(ok)))
    c = r.get("cost", {})
    if "rss_first_mb" in c:
        raw_cpu = r.get("drain", {}).get("raw", {}).get("cpu_s_per_100k")
        cpu_ratio = c["cpu_s_per_100k"] / raw_cpu if raw_cpu else None
        out.append((f"5 cost, {c['jobs']:,} jobs, 1 process",
                    f"RSS {c['rss_first_mb']:.0f} -> {c['rss_exit_mb']:.0f} MB (max {_f(c.get('rss_max_mb'))}), "
                    f"{c['cpu_s_per_100k']:.1f} CPU s/100k",
                    f"raw loop {_f(raw_cpu, '.1f')} CPU s/100k", _f(cpu_ratio, ".1f"), "CPU <= 1.5x raw; RSS flat",
                    _check(cpu_ratio <= 1.5 if cpu_ratio else None)))
    ours = r.get("drain", {}).get("protojobs_1p", {}).get("jobs_s")
    for name, v in r.get("peers", {}).items():
        if isinstance(v, dict):
            rate = v.get("jobs_s")
            vs = ("" if not rate or not ours else f"protojobs ahead ({ours / rate:.1f}x)" if ours >= rate
                  else f"peer ahead ({rate / ours:.1f}x protojobs 1 process)")
            out.append((f"6 peer {name} ({v.get('guarantee', '?')}; {v.get('settings', '?')})",
                        f"{_f(rate)} jobs/s" if rate else str(v.get("error", "-"))[:80], "", vs, "protojobs ahead",
                        _check(ours >= rate if rate and ours else None)))
    return out


def stages_table(r: dict[str, Any]) -> str:
    """The per-stage cost table of the profile scenario (empty without --profile)."""
    prof = r.get("profile", {})
    passes = {k: v for k, v in prof.items() if isinstance(v, dict) and "stages" in v}
    if not passes:
        return ""
    labels = list(passes)
    order = list(next(iter(passes.values()))["stages"])
    head = "| stage, est. us/job (share) | " + " | ".join(labels) + " |"
    lines = [head, "|" + "---|" * (len(labels) + 1)]
    for stage in order:
        cells = [f"{passes[k]['stages'][stage]['est_us']:.2f} ({passes[k]['stages'][stage]['share']:.0%})"
                 for k in labels]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    rates = [f"{_f(passes[k].get('unprofiled_jobs_s'))} jobs/s" for k in labels]
    lines.append("| in-process drain, unprofiled | " + " | ".join(rates) + " |")
    return "\n".join(lines) + "\n"


def readme(r: dict[str, Any], path: Path) -> None:
    """Rewrite the README block between the bench-table markers from the run `r`."""
    start, end = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path}: no {start} ... {end} block")
    m = r.get("machine", {})
    block = (f"{start}\n<!-- generated by `python bench/report.py --readme` from bench/results/latest.json -->\n"
             f"{'Quick' if r.get('quick') else 'Full'} run, {m.get('cores')} cores (shared), best of "
             f"{r.get('repeats')} runs, {_f(r.get('total_seconds'))} s in all."
             + (f" ({r['merged']}.)" if r.get("merged") else "") + "\n\n"
             + table(r).split("\n", 2)[2] + "\n" + stages_table(r) + end)
    head, rest = text.split(start, 1)
    path.write_text(head + block + rest.split(end, 1)[1])


def table(r: dict[str, Any]) -> str:
    head = ("scenario", "protojobs", "baseline (raw confluent-kafka)", "ratio", "target", "")
    body = [head, *rows(r)]
    widths = [max(len(row[i]) for row in body) for i in range(len(head))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in body]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    m = r.get("machine", {})
    return (f"\nprotojobs bench ({'quick' if r.get('quick') else 'full'}; {m.get('cores')} cores, shared; "
            f"best of {r.get('repeats')} runs)\n" + "\n".join(lines) + "\n")


def plots(r: dict[str, Any], where: Path) -> None:
    r = _scenarios(r)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is not installed: no plots", file=sys.stderr)
        return
    lat = {k: v for k, v in r.get("latency", {}).items() if "p99_ms" in v.get("protojobs", {})}
    if lat:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        rates = list(lat)
        width = 0.13
        for i, (side, stat) in enumerate((s, q) for s in ("protojobs", "raw") for q in ("p50_ms", "p99_ms", "max_ms")):
            xs = [j + (i - 2.5) * width for j in range(len(rates))]
            ax.bar(xs, [lat[k][side].get(stat, 0) for k in rates], width, label=f"{side} {stat[:-3]}",
                   hatch="" if side == "protojobs" else "//")
        ax.set_xticks(range(len(rates)), [f"{int(k):,} jobs/s" for k in rates])
        ax.set_ylabel("dispatch -> handler start (ms, log)")
        ax.set_yscale("log")
        ax.axhline(10, color="grey", linestyle=":", linewidth=1)
        ax.legend(fontsize=8, ncol=2)
        ax.set_title("Latency percentiles at offered rates")
        fig.tight_layout()
        fig.savefig(where / "latency.png", dpi=110)
        plt.close(fig)
    drain = r.get("drain", {})
    if "raw" in drain:
        fig, ax = plt.subplots(figsize=(6, 4))
        one, two = drain.get("protojobs_1p", {}).get("jobs_s"), drain.get("protojobs_2p", {}).get("jobs_s")
        if one and two:
            ax.plot([1, 2], [one, two], marker="o", label="protojobs (validate on consume)")
        nov = drain.get("protojobs_1p_novalidate", {}).get("jobs_s")
        if nov:
            ax.plot([1], [nov], marker="s", linestyle="", label="protojobs, validate_on_consume=false")
        if drain["raw"].get("jobs_s"):
            ax.plot([1], [drain["raw"]["jobs_s"]], marker="^", linestyle="", label="raw confluent-kafka loop")
        ax.set_xticks([1, 2])
        ax.set_xlabel("worker processes")
        ax.set_ylabel("jobs/s (no-op)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title("Drain throughput vs processes (2 cores, shared)")
        fig.tight_layout()
        fig.savefig(where / "throughput.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--readme"]
    here = Path(__file__).resolve().parent
    path = Path(args[0]) if args else here / "results" / "latest.json"
    results = json.loads(path.read_text())
    if "--readme" in sys.argv:
        readme(results, here.parent / "README.md")
        print(f"README.md: bench table rewritten from {path}")
    else:
        print(table(results))
        print(stages_table(results))
        plots(results, path.parent)
