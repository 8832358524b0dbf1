#!/usr/bin/env python3
"""What reporting a freed page once it has stayed free for A seconds would
keep, on a recorded curve, under an idealised allocator: freed memory is a
LIFO stack (the next allocation takes the freshest free memory first, as
the memserver's free lists do), and a page is resident while allocated or
free for less than A. Prints, per curve, the time-averaged host memory of
the policy bench's footprint replay (two guests x (curve x 768 MiB peak +
8 MiB live), as `tools bench --only policy` scales it) for several A, and
how much reported memory the curve takes back over 2 s windows (rule 2's
churn signal, docs/reporting-policies.md).

Usage: age_model.py   (from guest/traces; no arguments)
A = 0 is the bench's floor row; no reporting policy keeps less."""
import csv

PEAK_MIB, LIVE_MIB, GUESTS, DT = 768, 8, 2, 0.01
# (file, replay speed), as the policy bench replays them
CURVES = [("cppcheck-build.csv", 1), ("cppcheck-clang-build.csv", 1), ("cargo-build-regex.csv", 2)]
AGES = [0, 0.1, 0.25, 0.5, 1, 2, 4, 8, float("inf")]


def load(path, speed):
    rows = list(csv.DictReader(open(path)))
    t = [int(r["t_ms"]) / 1000 / speed for r in rows]
    kib = [int(r["rss_kib"]) for r in rows]
    peak = max(kib)
    return t, [k / peak * PEAK_MIB for k in kib]


def replay(t, mib, age):
    """Host memory averaged over the curve (MiB, one guest, no live set),
    and the (time, MiB) of each take-back of memory free for >= age."""
    stack, taken, area = [], [], 0.0  # stack: [MiB, time freed]
    now, i, cur = 0.0, 0, mib[0]
    while now < t[-1]:
        while i + 1 < len(t) and t[i + 1] <= now:
            i += 1
        if mib[i] < cur:
            stack.append([cur - mib[i], now])
        else:
            need = mib[i] - cur
            while need > 0 and stack:
                top = stack[-1]
                take = min(top[0], need)
                top[0] -= take
                need -= take
                if now - top[1] >= age:
                    taken.append((now, take))
                if top[0] <= 1e-9:
                    stack.pop()
        cur = mib[i]
        area += (cur + sum(s for s, freed in stack if now - freed < age)) * DT
        now += DT
    return area / t[-1], taken


for path, speed in CURVES:
    t, mib = load(path, speed)
    print(f"{path} (x{speed}): host MiB by age A (s) a free page is reported at")
    for age in AGES:
        avg, taken = replay(t, mib, age)
        line = f"  A={age:<5} {GUESTS * (avg + LIVE_MIB):7.0f} MiB"
        if 0 < age < float("inf"):
            windows = [sum(m for s, m in taken if k * 2 <= s < k * 2 + 2) for k in range(int(t[-1] / 2))]
            line += f"   taken back: max {max(windows):4.0f} MiB in 2 s, {sum(w > 256 for w in windows)} windows > 256 MiB"
        print(line)
