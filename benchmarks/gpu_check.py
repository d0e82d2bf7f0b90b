"""One-shot check for a lent GPU (well under 8 minutes): gpu-marked tests and measurements.

Sections (each in its own try/except, so one failure does not lose the others):

1. ``python -m pytest -m gpu -q`` in a subprocess, with a timeout.
2. Step time and peak memory of a small ResNet-like net: fp32, 16-mixed (autocast fp16 +
   GradScaler), 16-mixed + channels_last, and + ``torch.compile``, as ratios to fp32.
3. MemorySnapshot's overhead: steps with the CUDA allocator history on vs off (on CPU:
   the CPU memory profile instead), and the time to write the snapshot.
4. SyncDetector on a step with a deliberate ``.item()``: findings and overhead.

Prints a markdown table and writes it to ``$OUT/gpu_check.md`` if ``OUT`` is set, else to
``benchmarks/results/gpu_check.md``. Runs on CPU too (GPU-only parts are skipped with a
line saying so); ``--quick`` makes everything small.

    python benchmarks/gpu_check.py            # on the GPU machine
    python benchmarks/gpu_check.py --quick    # a fast smoke run, e.g. on CPU
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_tricks.functional import (  # noqa: E402
    SyncReport,
    detect_syncs,
    dump_cpu_memory_profile,
    dump_memory_snapshot,
    start_cpu_memory_profile,
    start_memory_recording,
    stop_memory_recording,
)

ROWS: list[tuple[str, str, str]] = []  # (section, what, result)


def progress(msg: str) -> None:
    tqdm.write(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stdout)  # above the bar


def row(section: str, what: str, result: str) -> None:
    ROWS.append((section, what, result))
    progress(f"{section}: {what}: {result}")


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


def resnet_like(width: int = 64, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2),
        Block(4 * width, 8 * width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * width, classes),
    )  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(model, opt, scaler, autocast_dtype, device):
    def step(x, y):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def time_loop(step, x, y, steps: int, warmup: int, device, wrap=None) -> float:
    for _ in range(warmup):
        step(x, y)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        if wrap is not None:
            with wrap(i):
                step(x, y)
        else:
            step(x, y)
    sync(device)
    return (time.perf_counter() - start) / steps


def section_gpu_tests(args, device) -> None:
    if device.type != "cuda":
        row("gpu tests", "pytest -m gpu", "SKIPPED: needs CUDA")
        return
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.test_timeout)
        tail = [line for line in out.stdout.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        row("gpu tests", "pytest -m gpu", f"rc={out.returncode}: {tail[0]}")
        if out.returncode != 0:
            print(out.stdout[-6000:], out.stderr[-3000:], sep="\n")
    except subprocess.TimeoutExpired:
        row("gpu tests", "pytest -m gpu", f"TIMEOUT after {args.test_timeout}s")


def section_precision(args, device) -> None:
    batch, size, width = (16, 32, 16) if args.quick else (128, 64, 64)
    steps, warmup = (3, 1) if args.quick else (30, 5)
    configs = [("fp32", None, False, False), ("16-mixed", torch.float16, False, False)]
    configs += [("16-mixed + channels_last", torch.float16, True, False)]
    configs += [("16-mixed + channels_last + compile", torch.float16, True, True)]
    base = None
    for name, dtype, channels_last, compiled in configs:
        if device.type != "cuda" and (dtype is not None or compiled):
            row("precision", name, "SKIPPED: needs CUDA")
            continue
        try:
            torch.manual_seed(0)
            model = resnet_like(width).to(device)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (batch,), device=device)
            fwd = torch.compile(model) if compiled else model
            step = make_step(fwd, opt, scaler, dtype, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time_loop(step, x, y, steps, warmup + (3 if compiled else 0), device)
            base = base or t
            peak = (
                f", peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device.type == "cuda" else ""
            )
            row("precision", name, f"{t * 1e3:.2f} ms/step, {base / t:.2f}x fp32 speed{peak}")
        except Exception as err:
            row("precision", name, f"FAILED: {err!r}"[:300])
            traceback.print_exc()


def section_memory_snapshot(args, device) -> None:
    batch, size, width = (8, 32, 8) if args.quick else (64, 64, 32)
    steps = 3 if args.quick else 20
    torch.manual_seed(0)
    model = resnet_like(width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    step = make_step(model, opt, scaler, None, device)
    x, y = torch.randn(batch, 3, size, size, device=device), torch.randint(0, 10, (batch,), device=device)
    base = time_loop(step, x, y, steps, 2, device)
    out = Path(tempfile.mkdtemp())
    if device.type == "cuda":
        start_memory_recording(max_entries=100_000)
        try:
            rec = time_loop(step, x, y, steps, 0, device)
            t0 = time.perf_counter()
            files = dump_memory_snapshot(out / "snap.pickle")
            dump = time.perf_counter() - t0
        finally:
            stop_memory_recording()
        what = "CUDA allocator history on"
    else:
        row("memory snapshot", "CUDA allocator history", "SKIPPED: needs CUDA; measuring the CPU profile")
        prof = start_cpu_memory_profile()
        try:
            rec = time_loop(step, x, y, steps, 0, device)
        finally:
            prof.stop()
        t0 = time.perf_counter()
        files = dump_cpu_memory_profile(prof, out / "profile")
        dump = time.perf_counter() - t0
        what = "CPU memory profile on"
    size_mb = sum(f.stat().st_size for f in files) / 2**20
    row("memory snapshot", what, f"{rec / base:.2f}x step time ({base * 1e3:.1f} -> {rec * 1e3:.1f} ms)")
    row("memory snapshot", "writing the files", f"{dump:.2f} s, {size_mb:.1f} MiB for {steps} steps")


def section_sync_detector(args, device) -> None:
    batch, size, width = (8, 32, 8) if args.quick else (64, 64, 32)
    steps = 3 if args.quick else 20
    torch.manual_seed(0)
    model = resnet_like(width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, size, size, device=device), torch.randint(0, 10, (batch,), device=device)
    values = []

    def step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        values.append(loss.item())  # the deliberate sync
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    report = SyncReport()
    base = time_loop(step, x, y, steps, 2, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time_loop(
            step,
            x,
            y,
            steps,
            0,
            device,
            wrap=lambda i: detect_syncs(report, device=device, on_error="ignore"),
        )
    cuda_warned = sum("synchroniz" in str(w.message) for w in caught)
    found = report.findings[0] if report.findings else {}
    where = f"{Path(found.get('site', '?')).name} `{found.get('code', '')}`"
    ok = report.total == steps and "item" in found.get("what", "")
    row(
        "sync detector",
        "deliberate .item()",
        f"{'OK' if ok else 'UNEXPECTED'}: {report.total} finding(s) at {where}",
    )
    if device.type == "cuda":
        row("sync detector", "CUDA sync debug warnings", str(cuda_warned))
    row("sync detector", "inspected step cost", f"{t / base:.2f}x a plain step ({base * 1e3:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--test-timeout", type=int, default=240, help="seconds for the gpu-marked tests")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    progress(f"device {name}, torch {torch.__version__}, quick={args.quick}")
    if device.type != "cuda":
        progress("no CUDA device: GPU-only parts are SKIPPED (each says so below)")
    sections = [("precision", section_precision), ("memory snapshot", section_memory_snapshot)]
    sections += [("sync detector", section_sync_detector)]
    if not args.skip_tests:
        sections.insert(0, ("gpu tests", section_gpu_tests))
    for label, fn in tqdm(sections, desc="gpu_check sections", unit="section"):
        progress(f"section {label} ...")
        try:
            fn(args, device)
        except Exception as err:
            row(label, "section", f"FAILED: {err!r}"[:300])
            traceback.print_exc()
    lines = [
        f"# gpu_check: {name}, torch {torch.__version__}, quick={args.quick}, "
        f"{time.perf_counter() - started:.0f} s",
        "",
        "| section | what | result |",
        "|---|---|---|",
    ]
    lines += [f"| {s} | {w} | {r.replace('|', '/')} |" for s, w, r in ROWS]
    table = "\n".join(lines) + "\n"
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.md").write_text(table)
    print(table)
    progress(f"written to {out_dir / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
