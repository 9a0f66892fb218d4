"""Run one pytest selection in several processes at once, for the GPU stages of ``gpu_checks.sh``.

A lent GPU has a few minutes a session, and its tests are mostly host work: each engine test loads
a tiny model, compiles or loads kernel variants and captures CUDA graphs, on one core, while the GPU
idles. Split over a few processes they share the GPU and the machine's cores instead.

    python scripts/pytest_shards.py SHARDS LOG_PREFIX PATH... [-- PYTEST_OPTION...]

The tests in PATH... (below the current directory, which is pytest's root here) are collected once
and dealt out in turn, the 1st, 2nd, ... to shards 1, 2, ... (neighbours in a file are often one
test with other parameters, so each shard gets some of each). Shard k writes
``LOG_PREFIX.shardK.log``. Afterwards this prints each shard's summary line, every FAILED or ERROR
line (and where an interrupted test stopped), and the totals; it exits 0 only if every shard did. Interrupted
(``timeout -s INT`` signals the whole process group), each shard stops as pytest does, printing what
failed so far, and the summary still comes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def collect(paths: list[str]) -> list[str]:
    """The node ids of the tests in ``paths``, in pytest's order; exits as pytest did if it cannot collect them."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", f"--rootdir={os.getcwd()}", *paths],
        capture_output=True, text=True,
    )  # fmt: skip
    if run.returncode not in (0, 5):  # 5: no tests
        print(run.stdout, run.stderr, sep="\n")
        sys.exit(run.returncode)
    ids = []
    for line in run.stdout.splitlines():  # the ids, then a blank line, then the count and any warnings
        if "::" in line and not line.startswith(" "):
            ids.append(line)
        elif ids and not line.strip():
            break
    return ids


def deal(ids: list[str], shards: int) -> list[list[str]]:
    return [part for part in (ids[k::shards] for k in range(shards)) if part]


def summary_counts(log: str) -> dict[str, int]:
    """The counts on pytest's last summary line ("3 passed, 1 skipped in 2.1s"); {} if it has none."""
    lines = [line for line in log.splitlines() if " in " in line and _COUNT.search(line)]
    if not lines:
        return {}
    return {"error" if word.startswith("error") else word: int(n) for n, word in _COUNT.findall(lines[-1])}


def main(argv: list[str]) -> int:
    options = argv[argv.index("--") + 1 :] if "--" in argv else []
    positional = argv[: argv.index("--")] if "--" in argv else argv
    if len(positional) < 3 or not positional[0].isdigit() or int(positional[0]) < 1:
        print(__doc__)
        return 2
    shards, prefix, paths = int(positional[0]), positional[1], positional[2:]
    parts = deal(collect(paths), shards)
    if not parts:
        print(f"no tests collected in {' '.join(paths)}")
        return 5
    env = dict(os.environ)
    # torch's CPU threads (HF references, tensor set-up): the machine's cores shared, not each shard taking all
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, len(parts)))))
    start = time.perf_counter()
    logs = [Path(f"{prefix}.shard{k + 1}.log") for k in range(len(parts))]
    procs = []
    for ids, log in zip(parts, logs):
        with open(log, "w") as out:
            cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--rootdir={os.getcwd()}", *options, *ids]
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
    print(f"{sum(map(len, parts))} tests in {len(parts)} shards: {', '.join(str(log) for log in logs)}", flush=True)
    codes, interrupted = [], False
    for proc in procs:
        while True:
            try:
                codes.append(proc.wait())
                break
            except KeyboardInterrupt:  # the shards got it too: wait for them to print their summaries
                interrupted = True
    totals: dict[str, int] = {}
    for k, (log, code) in enumerate(zip(logs, codes)):
        text = log.read_text(errors="replace")
        last = text.strip().splitlines()[-1] if text.strip() else "(no output)"
        print(f"shard {k + 1} (exit {code}): {last}")
        for word, n in summary_counts(text).items():
            totals[word] = totals.get(word, 0) + n
    for log in logs:  # what failed, and where an interrupted shard was (pytest's "path:line: KeyboardInterrupt")
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(("FAILED ", "ERROR ")) or line.endswith(": KeyboardInterrupt"):
                print(line)
    counts = ", ".join(f"{n} {word}" for word, n in sorted(totals.items())) or "no summary"
    print(f"all shards: {counts} in {time.perf_counter() - start:.0f}s{' (interrupted)' if interrupted else ''}")
    return next((code for code in codes if code not in (0, 5)), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
