#!/usr/bin/env python3
"""Turns the device check's results (scripts/device_check.sh run: OUTDIR/device_check.jsonl, OUTDIR/reports/*.yaml,
OUTDIR/info.txt) into the GPU section of benches/RESULTS.md.

    device_results.py OUTDIR                      prints the section
    device_results.py OUTDIR --write FILE.md      replaces the section in FILE.md (between its markers), or appends it

Standard library only: the reports are read with a small parser for the block YAML robustd writes (PyYAML is used
when installed).
"""

import argparse
import json
import os
import re
import sys

BEGIN = "<!-- device-check:begin -->"
END = "<!-- device-check:end -->"


def scalar(text):
    text = text.strip()
    if text in ("", "~", "null"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_block_yaml(text):
    """Block mappings and sequences with scalar leaves (flow collections kept as strings): robustd's reports."""
    lines = [(len(l) - len(l.lstrip(" ")), l.strip()) for l in text.splitlines()
             if l.strip() and not l.lstrip().startswith("#")]

    def block(i, indent):
        if i < len(lines) and lines[i][1].startswith("- ") or (i < len(lines) and lines[i][1] == "-"):
            out = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
                rest = lines[i][1][1:].strip()
                if not rest:
                    value, i = block(i + 1, lines[i + 1][0]) if i + 1 < len(lines) else (None, i + 1)
                elif re.match(r"^[^'\"]+?:( |$)", rest):
                    # A mapping item: its first key sits on the dash line, two columns in.
                    lines[i] = (indent + 2, rest)
                    value, i = block(i, indent + 2)
                else:
                    value, i = scalar(rest), i + 1
                out.append(value)
            return out, i
        out = {}
        while i < len(lines) and lines[i][0] == indent:
            key, _, rest = lines[i][1].partition(":")
            key = scalar(key)
            if rest.strip():
                out[key], i = scalar(rest), i + 1
            elif i + 1 < len(lines) and (lines[i + 1][0] > indent or
                                         (lines[i + 1][0] == indent and lines[i + 1][1].startswith("-"))):
                out[key], i = block(i + 1, lines[i + 1][0])
            else:
                out[key], i = None, i + 1
        return out, i

    return block(0, lines[0][0])[0] if lines else {}


def load_yaml(path):
    with open(path) as f:
        text = f.read()
    try:
        import yaml  # noqa: PLC0415

        return yaml.safe_load(text)
    except ImportError:
        return parse_block_yaml(text)


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def ratio(ours, theirs):
    return None if ours is None or not theirs else ours / theirs


def section(outdir):
    rows = [json.loads(l) for l in open(os.path.join(outdir, "device_check.jsonl")) if l.strip()]
    host = next((r for r in rows if r.get("side") == "host"), {})
    eager = {(r["cmd"], r["model"], "bf16-cl" if r["amp"] else "fp32"): r for r in rows if r.get("side") == "eager"}
    steps = {r["step"]: r for r in rows if r.get("side") == "robustd"}
    reports = {}
    rdir = os.path.join(outdir, "reports")
    for name in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else []:
        reports[name[:-5]] = load_yaml(os.path.join(rdir, name))
    info = open(os.path.join(outdir, "info.txt")).read() if os.path.exists(os.path.join(outdir, "info.txt")) else ""
    env = next((get(r, "environment") for r in reports.values() if get(r, "environment")), {}) or {}
    gpu = next((r.get("gpu") for r in eager.values()), None) or env.get("device_model") or "unknown"
    out = [BEGIN, "## GPU: robustd vs PyTorch eager on the same card (scripts/device_check.sh)", ""]
    out.append(f"Device {host.get('device', '?')} ({gpu}); budget {host.get('budget', '?')}: {host.get('n')} test "
               f"samples per attack, {host.get('samples')} training samples per epoch, APGD-CE "
               f"{host.get('apgd_steps')} steps. robustd {env.get('robustd', '?')}, libtorch {env.get('libtorch', '?')}, "
               f"onnxruntime {env.get('onnxruntime', '?')} ({env.get('onnxruntime_provider', '?')}); eager: torch "
               f"{next((r.get('torch') for r in eager.values()), '?')}. Times are wall seconds of the work itself "
               "(robustd: the report's per-attack and training seconds; eager: CUDA-synchronized, after a warm-up "
               "batch). Ratio = robustd / eager (goal <= 1.0; floor: robustd at >= 70 % of eager's throughput, "
               "ratio <= 1.43).")
    out += ["", "| workload | model | precision | robustd s | eager s | ratio | robustd robust acc | eager robust acc |",
            "|---|---|---|---|---|---|---|---|"]
    for model in ("cnn", "resnet18"):
        for label in ("fp32", "bf16-cl"):
            rep = reports.get(f"eval-{model}-{label}")
            ref = eager.get(("eval", model, label))
            if rep is None and ref is None:
                continue
            for attack, key in (("PGD-20", "pgd"), ("APGD-CE", "apgd-ce")):
                ours = get(rep, "evaluation", "before", "attacks", key, "seconds")
                theirs = get(ref, "results", attack.lower(), "seconds")
                out.append(f"| {attack} eval | {model} | {label} | {fmt(ours)} | {fmt(theirs)} | "
                           f"{fmt(ratio(ours, theirs))} | "
                           f"{fmt(get(rep, 'evaluation', 'before', 'attacks', key, 'robust_acc'), 3)} | "
                           f"{fmt(get(ref, 'results', attack.lower(), 'robust_acc'), 3)} |")
            rep = reports.get(f"epoch-{model}-{label}")
            ref = eager.get(("epoch", model, label))
            stages = {s["name"]: s["seconds"] for s in (get(rep, "timing", "stages") or []) if isinstance(s, dict)}
            ours = get(rep, "training", "seconds") or stages.get("finetune")
            theirs = get(ref, "results", "bat-epoch", "seconds")
            out.append(f"| BAT epoch | {model} | {label} | {fmt(ours)} | {fmt(theirs)} | {fmt(ratio(ours, theirs))} "
                       "| | |")
    daemon = steps.get("daemon-job", {})
    drep = reports.get("daemon-cnn")
    out += ["", f"Daemon job end to end (cnn, `runtime.devices: auto`, automatic batch size): {daemon.get('state', '?')} "
                f"in {fmt(daemon.get('wall_s'), 1)} s from submit to `done`; report device "
                f"{get(drep, 'environment', 'device')} ({get(drep, 'environment', 'device_model')}), onnxruntime "
                f"{get(drep, 'environment', 'onnxruntime_provider')}."]
    failed = [f"{k} (exit {v.get('rc')})" for k, v in steps.items() if v.get("rc", 0) != 0]
    if failed:
        out += ["", "Steps that failed: " + ", ".join(failed) + " (logs in the device check's output)."]
    out += ["", "`robustd info` there:", "", "```", info.strip(), "```", END]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--write", metavar="FILE")
    args = ap.parse_args()
    text = section(args.outdir)
    if not args.write:
        sys.stdout.write(text)
        return
    old = open(args.write).read() if os.path.exists(args.write) else ""
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text.rstrip("\n") + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(args.write, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()
