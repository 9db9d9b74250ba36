"""Verdicts that differ between two dumps of scripts/verdicts_dump.py: ``python verdicts_diff.py before after``."""
import json
import sys


def load(path):
    return {d["key"]: d for d in map(json.loads, open(path)) if d["verdict"]}


a, b = load(sys.argv[1]), load(sys.argv[2])
for key in sorted(set(a) | set(b)):
    va, vb = a.get(key, {}).get("verdict", "(absent)"), b.get(key, {}).get("verdict", "(absent)")
    if va != vb:
        print(f"{key}: {va} -> {vb}")
