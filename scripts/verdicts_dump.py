"""Every verdict the book computes at one scale, as JSON lines ``{"key": ..., "verdict": ..., "detail": ...}``.

Run it with the package of one tree on the path to list that tree's verdicts, and diff two runs::

    PYTHONPATH=/path/to/tree python scripts/verdicts_dump.py quick > verdicts.jsonl

It reads the committed records only (trains nothing). Functions a tree lacks are skipped.
"""
from __future__ import annotations

import json
import sys
import warnings


def main(scale: str) -> None:
    warnings.simplefilter("ignore")
    import pandas as pd

    from marnn import book, report
    from marnn import verdicts as V
    from marnn.analysis import audit

    out: list[dict] = []

    def put(key: str, verdict, detail="") -> None:
        out.append({"key": key, "verdict": str(verdict), "detail": str(detail)})

    inp = audit.load(scale)
    for f in audit.run_checks(inp, chapters=book.NOTEBOOKS):
        put(f"audit/{f.id}/paper", f.verdict, f.recomputed)
        put(f"audit/{f.id}/ours", f.ours_verdict, f.ours)
    df = report.formal_results(scale, compute=False)
    paper = report.paper_formal()  # accuracy, and validation perplexity to choose models
    last = report.last_bin(df)
    for mode in ("m", "c"):
        for split in ("bin0", "bin1", last):
            t = V.mode_verdicts(df, mode, "none", split)
            for r, v in zip(t.to_dict("records"), t.attrs["verdicts"], strict=True):
                put(f"table1/ours/{mode}-vs-none/{split}/{r['task']}", v.verdict,
                    f"{r[f'model ({mode})']} vs {r['model (none)']}: {v.text(3)}")
            put(f"table1/ours/{mode}-vs-none/{split}/count", V.count(t.attrs["verdicts"]).verdict)
            p = V.paper_mode_verdicts(paper, mode, "none", split)
            for r, v in zip(p.to_dict("records"), p.attrs["verdicts"], strict=True):
                put(f"table1/paper/{mode}-vs-none/{split}/{r['task']}", v.verdict, v.text(3))
            put(f"table1/paper/{mode}-vs-none/{split}/count", V.count(p.attrs["verdicts"]).verdict)
    for fig, pool, top in (("fig2", report.FORMAL_MODELS, 3), ("fig3", report.MEMORY_MODELS, 2)):
        part = df[df["model"].isin(pool) & df["freeze"].isin(["none", "m"])]
        chosen = report.top_models(part, top, modes=["none", "m"], models=pool)
        theirs = paper[paper["freeze"].isin(["none", "m"]) & paper["model"].isin(pool)]
        s = V.figure_summary(part, theirs, chosen, "m", scale, ["none", "m"])
        for (task, model), r in s["ours"].iterrows():
            put(f"{fig}/ours/{task}/{model}", r["verdict"])
        put(f"{fig}/ours/count", V.count(s["ours"].attrs.get("verdicts", [])).verdict
            if "verdicts" in s["ours"].attrs else "")
        for (task, model), r in s["paper"].iterrows():
            put(f"{fig}/paper/{task}/{model}", r["verdict"])
        for idx, r in s["positions"].iterrows():
            put(f"{fig}/position/{'/'.join(map(str, idx))}", r["vs trivial"])
        for who in ("languages", "paper_languages"):  # one effect per language (where the tree has it)
            for task, r in s.get(who, pd.DataFrame()).iterrows():
                put(f"{fig}/{who}/{task}", r["verdict"])
        put(f"{fig}/text", "", s["text"])
    best = report.best_per_task(report.ours_long(df, ["accuracy", "perplexity"]), [last])
    pos = V.positions(df, best[["task", "model", "freeze"]].to_dict("records"), last)
    for r in pos.to_dict("records"):
        put(f"findings/position/{r['task']}/{r['freeze']}", r["vs trivial"], r["model"])
    kept = V.retention_comparison(df, "m", "none", "bin0", last)
    put("table2/retention m vs none", kept.verdict, kept.text(3))
    for line in out:
        print(json.dumps(line))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick")
