#!/usr/bin/env python3
"""Run a command and sample the summed VmRSS of its process tree every 100 ms.
Usage: record.py OUT.csv -- CMD ARGS..."""
import os, subprocess, sys, time
out = sys.argv[1]; cmd = sys.argv[3:]
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def tree_rss(root):
    kids = {}
    for d in os.listdir('/proc'):
        if not d.isdigit(): continue
        try:
            with open(f'/proc/{d}/stat') as f: st = f.read()
            ppid = int(st.rsplit(')', 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except OSError: pass
    total, todo = 0, [root]
    while todo:
        pid = todo.pop(); todo += kids.get(pid, [])
        try:
            with open(f'/proc/{pid}/status') as f:
                for l in f:
                    if l.startswith('VmRSS:'): total += int(l.split()[1])
        except OSError: pass
    return total
t0 = time.monotonic(); rows = []
while p.poll() is None:
    t = time.monotonic() - t0
    rows.append((round(t * 1000), tree_rss(p.pid)))
    time.sleep(max(0, 0.1 - (time.monotonic() - t0 - t)))
with open(out, 'w') as f:
    f.write('t_ms,rss_kib\n')
    for t, r in rows: f.write(f'{t},{r}\n')
print(len(rows), 'samples, exit', p.returncode)
