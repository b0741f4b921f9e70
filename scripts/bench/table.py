"""Prints the side-by-side table of a results file written by scripts/bench/run.sh.

    python scripts/bench/table.py RESULTS.jsonl [--markdown]

Each line of the results file is a JSON object: {"side": "meta", ...} once, then per work
item {"side": "rustformers" | "peer", "work": ..., "result": {...} | null, "error": ...}.
Rows are matched on (work, unit); ratio = rustformers median / peer median.
"""

from __future__ import annotations

import argparse
import json
import sys

HIGHER_IS_BETTER = {"sentences/s": True, "tokens/s": True, "samples/s": True, "s": False, "MB": False}


def fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def rows(lines: list[dict]) -> tuple[dict, list[list[str]]]:
    meta = next((l for l in lines if l.get("side") == "meta"), {})
    order: list[tuple[str, str]] = []
    got: dict[tuple[str, str], dict] = {}
    works = []
    for l in lines:
        if l.get("side") not in ("rustformers", "peer"):
            continue
        if l["work"] not in works:
            works.append(l["work"])
        r = l.get("result")
        if r:
            key = (l["work"], r["unit"])
            if key not in order:
                order.append(key)
            got.setdefault(key, {})[l["side"]] = r
            # rustformers prints load-* as one object: time ("s") with peak_rss_mb beside.
            if l["side"] == "rustformers" and r["unit"] == "s" and r.get("peak_rss_mb") is not None:
                mb = {"unit": "MB", "median": r["peak_rss_mb"], "min": r.get("peak_rss_mb_min", r["peak_rss_mb"]),
                      "max": r.get("peak_rss_mb_max", r["peak_rss_mb"])}
                mkey = (l["work"], "MB")
                if mkey not in order:
                    order.append(mkey)
                got.setdefault(mkey, {}).setdefault("rustformers", mb)
    for w in works:                     # items where neither side produced a figure
        if not any(k[0] == w for k in order):
            order.append((w, "?"))
    out = []
    for work, unit in order:
        rf = got.get((work, unit), {}).get("rustformers")
        peer = got.get((work, unit), {}).get("peer")
        a = rf["median"] if rf else None
        b = peer["median"] if peer else None
        ratio = f"{a / b:.2f}x" if a is not None and b else "n/a"
        better = {True: "higher", False: "lower"}.get(HIGHER_IS_BETTER.get(unit), "?")
        spread = (lambda r: f"{fmt(r['min'])}-{fmt(r['max'])}" if r else "")
        out.append([work, unit, fmt(a), spread(rf), fmt(b), spread(peer), ratio, better,
                    (peer or {}).get("peer", "")])
    return meta, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    lines = [json.loads(l) for l in open(args.results) if l.strip()]
    meta, table = rows(lines)
    head = ["work", "unit", "rustformers", "(min-max)", "peer", "(min-max)", "ratio", "better", "peer is"]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in table:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
        for r in [head] + table:
            print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())
    if meta:
        print(f"\nmachine: {meta.get('cpu', '?')}, {meta.get('threads', '?')} threads; "
              f"rustformers {meta.get('git', '?')}; ratio = rustformers median / peer median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
