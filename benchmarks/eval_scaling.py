"""Evaluation scaling: one process with T threads against N processes with T/N threads each, same data.

Runs ``minisam-train eval`` twice on the shared data (default: the cosmos_sample test split, LiteMedSAM,
box prompts, CPU) into fresh folders:

- ``one``: ``python -m minisam_train eval ... threads=<cores>`` (a plain command, one process);
- ``N``:   ``accelerate launch --multi_gpu --num_processes N -m minisam_train eval ... device=cpu
  threads=<cores / N>`` (torchrun underneath: N CPU processes, each on its share of the slices),
- a control: one process with 1 thread (tells the effect of torch's threads from that of the processes),

checks that the merged ``per_object.csv`` equals the single process's (same keys in the same order, Dice and
NSD within 1e-6; byte equality reported), and reports the throughput of both: slices per second of the
evaluation loops (``efficiency.csv``: the single row, and the ``all`` row of the N processes) and of the
whole command (start-up and model loading included), with the load average before each run and during it.

From the single process's per-slice cost it sizes COSMOS 1050K (``--slices``, ~1 M) for some model and
prompt-mode counts: hours on this CPU, and hours on ``--gpus`` GPUs at ``--gpu-seconds-per-slice`` per
slice and model. **The GPU cost is an assumption, not a measurement** (no GPU here); the doc says so.

    python benchmarks/eval_scaling.py                  # runs, writes the eval-scaling section of docs/evaluation.md
    python benchmarks/eval_scaling.py --no-write       # print only
    python benchmarks/eval_scaling.py --report runs/bench/eval_scaling/result.json   # rewrite the section
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_sections  # noqa: E402 - the shared section writer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MINISAM_SHARED_DATA", REPO.parent / "shared" / "data"))
DOC = REPO / "docs" / "evaluation.md"
START, END = "<!-- eval-scaling:start -->", "<!-- eval-scaling:end -->"
AFTER = "<!-- eval-scaling:after -->"
KEYS = ("model", "dataset", "modality", "object", "image", "prompt", "selection")


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eval_overrides(args, out: Path, threads: int) -> list[str]:
    roots = ",".join(str(DATA / r) for r in args.roots)
    over = [f"data.roots=[{roots}]", f"models=[{args.model}]", f"prompts=[{','.join(args.prompts)}]",
            "device=cpu", f"threads={threads}", "logging.progress=false", "plots=false", f"output_dir={out}",
            "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    if args.split_key:
        over += [f"data.split_file={DATA / 'splits.json'}", f"data.split_key={args.split_key}"]
    return over


def run_eval(cmd: list[str], out: Path) -> dict:
    """Run one evaluation command into a fresh ``out``; its wall time, load average and efficiency rows."""
    shutil.rmtree(out, ignore_errors=True)
    load_before = os.getloadavg()[0]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # the CPU, also where there are GPUs
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}")
    eff = read_csv(out / "efficiency.csv")
    head = next((r for r in eff if r.get("process") == "all"), eff[0])
    return {"command_s": round(wall, 1), "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2), "efficiency": eff, "head": head,
            "rows": len(read_csv(out / "per_object.csv"))}


def compare(a: Path, b: Path) -> dict:
    """Are two per_object.csv the same rows? (keys and order exact; largest Dice / NSD difference)."""
    ra, rb = read_csv(a), read_csv(b)
    same_keys = len(ra) == len(rb) and all([x[k] for k in KEYS] == [y[k] for k in KEYS] for x, y in zip(ra, rb))
    diff = max((abs(float(x[k]) - float(y[k])) for x, y in zip(ra, rb) for k in ("dice", "nsd")), default=0.0)
    return {"rows": len(ra), "same_keys_and_order": same_keys, "max_abs_diff": diff,
            "byte_equal": a.read_bytes() == b.read_bytes()}


def measure(args) -> dict:
    n, total = args.processes, args.cores or cores()
    per = max(1, total // n)
    base = Path(args.out)
    one_out, many_out = base / "one", base / f"n{n}"
    print(f"[eval_scaling] 1 process x {total} threads ...", file=sys.stderr, flush=True)
    one = run_eval([sys.executable, "-m", "minisam_train", "eval", *eval_overrides(args, one_out, total)], one_out)
    print(f"[eval_scaling] {n} processes x {per} thread(s) ...", file=sys.stderr, flush=True)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "minisam_train", "eval"]
    many = run_eval(launch + eval_overrides(args, many_out, per), many_out)
    control = None
    if total > 1 and not args.no_control:
        print("[eval_scaling] control: 1 process x 1 thread ...", file=sys.stderr, flush=True)
        control = run_eval([sys.executable, "-m", "minisam_train", "eval",
                            *eval_overrides(args, base / "one_1thread", 1)], base / "one_1thread")
    same = compare(one_out / "per_object.csv", many_out / "per_object.csv")
    if not (same["same_keys_and_order"] and same["max_abs_diff"] <= 1e-6):
        print(f"[eval_scaling] the merged rows differ from the single process's: {same}", file=sys.stderr)
    return {"cores": total, "processes": n, "threads_one": total, "threads_each": per, "cpu": doc_sections.cpu_name(),
            "model": args.model, "prompts": args.prompts, "roots": args.roots, "split_key": args.split_key,
            "one": one, "many": many, "control": control, "same": same,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": "python benchmarks/eval_scaling.py " + " ".join(sys.argv[1:])}


def sizing(res: dict, slices: int, gpus: int, gpu_s: float) -> list[str]:
    """COSMOS 1050K sizing from the single process's per-slice cost on this CPU, and from an assumed GPU cost.

    The faster single-process run (``T`` threads or the 1-thread control) is the per-slice cost. Its loop
    splits into a per-slice part (reading, encoder, prompts) and a per-prompt-mode part (the decoder calls of
    one mode); more modes add the latter per mode (an approximation: point modes decode 3 candidates and score
    two selections, so they cost more than the box mode measured)."""
    runs = [("one", res["threads_one"])] + ([("control", 1)] if res.get("control") else [])
    key, threads = max(runs, key=lambda kv: float(res[kv[0]]["head"]["slices_per_s"]))
    h = res[key]["head"]
    per_slice = float(h["wall_s"]) / int(h["slices"])
    enc = float(h["encoder_ms_per_image"]) / 1000 * int(h["images_timed"]) / int(h["slices"])
    dec_per_slice = float(h["decoder_ms_per_prompt"]) / 1000 * int(h["prompts_timed"]) / int(h["slices"])
    host = max(0.0, per_slice - enc - dec_per_slice)  # reading, prompts, Dice / NSD, Python: stays on the CPU
    modes_measured = len(res["prompts"])
    mode_cost = dec_per_slice / modes_measured
    base_cost = per_slice - dec_per_slice
    lines = [f"| models | prompt modes | slice evaluations | this CPU, 1 process: hours (days) "
             f"| {gpus} GPUs at {gpu_s:g} s per slice and model (assumed): hours | GPU-hours (assumed) |",
             "|---|---|---|---|---|---|"]
    for models, modes in ((1, 1), (1, 5), (2, 5), (3, 5)):
        evals = slices * models
        cpu_h = evals * (base_cost + modes * mode_cost) / 3600
        gpu_h = evals * gpu_s / 3600
        lines.append(f"| {models} | {modes} | {evals:,} | {cpu_h:,.0f} ({cpu_h / 24:,.1f}) "
                     f"| {gpu_h / gpus:,.1f} | {gpu_h:,.0f} |")
    return [f"Per-slice cost measured here (1 process, {threads} thread(s), the faster single process; "
            f"`{res['model']}`, {', '.join(res['prompts'])}): {per_slice:.2f} s per slice: encoder {enc:.2f} s, "
            f"decoder {dec_per_slice:.2f} s for the {modes_measured} prompt mode(s), the rest (reading, prompts, "
            f"Dice / NSD, Python) {host:.3f} s. Sized for {slices:,} slices:", "", *lines, "",
            f"CPU columns: {slices:,} slices x models x ({base_cost:.2f} s + modes x {mode_cost:.2f} s), the "
            "measured split between per-slice work and per-mode decoder time; point modes decode 3 candidates and "
            "score two selections, so the 5-mode rows are a lower bound. **The GPU columns are not measured**: no "
            f"GPU was available for this benchmark. {gpu_s:g} s per slice and model (all prompt modes) is an "
            "assumption: the model's share should shrink to milliseconds on a GPU, while the host work measured "
            f"above ({host:.3f} s per slice, more with more modes) stays on the CPU. Scale the columns linearly to "
            "the `slices_per_s` of a GPU run's `efficiency.csv`, or rerun with `--report result.json "
            "--gpu-seconds-per-slice S`. They assume one process per GPU, the slices dealt evenly (round robin: the "
            "processes finish within a slice or two of each other) and enough CPU cores per GPU for the host work; "
            "start-up (~15 s per process) and the final merge are not included."]


def report(res: dict, args) -> str:
    one, many, same = res["one"], res["many"], res["same"]
    h1, hn = one["head"], many["head"]
    loop1, loopn = float(h1["slices_per_s"]), float(hn["slices_per_s"])
    n = res["processes"]
    slices = int(h1["slices"])
    parts = [r for r in many["efficiency"] if r.get("process") not in ("all", None, "")]
    data = ", ".join(res["roots"]) + (f", images under `{res['split_key']}` in splits.json" if res["split_key"] else "")
    lines = [
        f"Measured {res['date']} with `{res['command'].strip()}` on {res['cpu']}, {res['cores']} cores: "
        f"`{res['model']}`, prompts {', '.join(res['prompts'])}, {data} ({slices} slices, {one['rows']} "
        "per-object rows), CPU.", "",
        "| run | processes x torch threads | loop slices/s | loop wall s | command wall s (start-up, model load) "
        "| load avg before / during |",
        "|---|---|---|---|---|---|",
        f"| plain `python -m minisam_train eval` | 1 x {res['threads_one']} | {loop1:.3f} | {float(h1['wall_s']):.1f} "
        f"| {one['command_s']:.1f} | {one['load_before']:.1f} / {float(h1['load_avg_1min'] or 0):.1f} |",
        f"| `accelerate launch --multi_gpu --num_processes {n}` | {n} x {res['threads_each']} | {loopn:.3f} "
        f"| {float(hn['wall_s']):.1f} | {many['command_s']:.1f} | {many['load_before']:.1f} / "
        f"{float(hn['load_avg_1min'] or 0):.1f} |",
    ]
    for r in parts:
        lines.append(f"| process {r['process']} of {n} | 1 x {r['torch_threads']} | {float(r['slices_per_s']):.3f} "
                     f"| {float(r['wall_s']):.1f} | | |")
    control = res.get("control")
    if control:
        hc = control["head"]
        lines.append(f"| control: plain command | 1 x 1 | {float(hc['slices_per_s']):.3f} | {float(hc['wall_s']):.1f} "
                     f"| {control['command_s']:.1f} | {control['load_before']:.1f} / "
                     f"{float(hc['load_avg_1min'] or 0):.1f} |")
    ratio = loopn / loop1 if loop1 else float("nan")
    cmd_ratio = one["command_s"] / many["command_s"] if many["command_s"] else float("nan")
    loads = [float(h1["load_avg_1min"] or 0), float(hn["load_avg_1min"] or 0), one["load_before"],
             many["load_before"]]
    enc1, encn = float(h1["encoder_ms_per_image"]), float(hn["encoder_ms_per_image"])
    dec1, decn = float(h1["decoder_ms_per_prompt"]), float(hn["decoder_ms_per_prompt"])
    lines += ["", f"**Throughput ratio ({n} processes x {res['threads_each']} thread(s) / 1 process x "
              f"{res['threads_one']} threads): {ratio:.2f} for the evaluation loops, {cmd_ratio:.2f} for the whole "
              "commands** (start-up and model loading included)."]
    if control:
        hc = control["head"]
        loads += [float(hc["load_avg_1min"] or 0), control["load_before"]]
        loopc = float(hc["slices_per_s"])
        lines[-1] += (f" Against the 1-thread control: {loopn / loopc:.2f} ({n} processes on {res['cores']} cores "
                      f"can give at most {min(n, res['cores'])}); 1 process x {res['threads_one']} threads / 1 x 1: "
                      f"{loop1 / loopc:.2f}.")
    lines += ["", f"Encoder ms per image: {enc1:,.0f} with 1 process x {res['threads_one']} threads, {encn:,.0f} "
              f"per process with {n} x {res['threads_each']}; decoder ms per prompt {dec1:.0f} against {decn:.0f}. "
              "On one machine the processes share its cores, so N processes can at best match one process that "
              "keeps every core busy; they win where one process does not: the work a process does not spread "
              "over its threads (reading PNGs, prompts, Dice / NSD, Python), and, on this shared 2-core machine, "
              "torch's intra-op threads themselves, which lose time whenever another process holds a core. "
              "The gain that matters is across GPUs and machines, where each process brings its own device.", ""]
    busy = max(loads)
    if busy > res["cores"]:
        lines += [f"The machine was shared while this ran (load average up to {busy:.1f} on {res['cores']} cores, "
                  "including the benchmark's own processes): the timings, and so the ratio, carry that noise.", ""]
    ok = same["same_keys_and_order"] and same["max_abs_diff"] <= 1e-6
    lines += [f"Merged result: {same['rows']} rows, "
              + ("the same keys in the same order as the single process's, " if same["same_keys_and_order"]
                 else "**keys or order differ from the single process's**, ")
              + f"largest Dice / NSD difference {same['max_abs_diff']:.1e}"
              + ("; the files are byte for byte identical." if same["byte_equal"] else
                 "; the files differ in bytes.") + ("" if ok else " **Not equal within 1e-6.**"), ""]
    lines += ["#### Sizing COSMOS 1050K", ""] + sizing(res, args.slices, args.gpus, args.gpu_seconds_per_slice)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roots", nargs="+", default=["cosmos_sample"], help="COSMOS roots under the shared data")
    ap.add_argument("--split-key", default="test", help="keep the images of this key of splits.json ('' = all)")
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--prompts", nargs="+", default=["box"])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--cores", type=int, help="threads of the single process (default: the usable cores)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench" / "eval_scaling"))
    ap.add_argument("--slices", type=int, default=1_000_000, help="slices to size for (COSMOS 1050K: ~1 M)")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--gpu-seconds-per-slice", type=float, default=0.1,
                    help="ASSUMED cost of one slice and model on one GPU, all prompt modes (not measured here)")
    ap.add_argument("--no-control", action="store_true", help="skip the 1 process x 1 thread control run")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/evaluation.md alone")
    ap.add_argument("--report", help="a result.json of an earlier run: rewrite the section without running")
    args = ap.parse_args(argv)
    if args.report:
        res = json.loads(Path(args.report).read_text())
    else:
        res = measure(args)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "result.json").write_text(json.dumps(res, indent=1))
    text = report(res, args)
    print(text)
    if not args.no_write:
        doc_sections.write_section(DOC, text, START, END, after=AFTER)


if __name__ == "__main__":
    main()
