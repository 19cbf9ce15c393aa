#!/usr/bin/env python3
"""One-off generator of the first suites/catalog.toml from the seed task table
(001_*.txt) and nextest's test list. The catalogue is the reviewed source of
truth afterwards: edit catalog.toml, not this script. Kept for the record of
how titles, priorities, oracles and requirements were derived (each test id
takes them from every task that lists it; the strictest priority wins)."""
import json, re, sys
seed, listing = sys.argv[1], sys.argv[2]
text = open(seed).read()
tasks = []
for block in re.split(r"^### ", text, flags=re.M)[1:]:
    m = re.match(r"(P1-TASK-\d+): (.*)", block)
    if not m: continue
    f = dict(re.findall(r"^\| \*\*(\w+)\*\* \| (.*?) \|\s*$", block, flags=re.M))
    tasks.append(dict(id=m.group(1), title=m.group(2).strip(), tests=f.get("Test_Cases",""),
        reqs=[r.strip() for r in f.get("Requirement_IDs","").split(",") if r.strip()],
        oracles=[o.strip() for o in f.get("Oracle_Type","").split(",") if o.strip()],
        prio=f.get("Priority","P1").strip()))

def expand(tc):
    out = []
    for part in [p.strip() for p in tc.split(",")]:
        part = re.sub(r"\s*\(.*\)", "", part)
        m = re.match(r"P1-([A-Z])(\d+)\.\.([A-Z])?(\d+)$", part)
        if m:
            a, b = int(m.group(2)), int(m.group(4)); w = len(m.group(2))
            out += [f"P1-{m.group(1)}{i:0{w}d}" for i in range(a, b+1)]; continue
        m = re.match(r"P1-T-([A-Z]+)(\d+)\.\.([A-Z]+)?(\d+)$", part)
        if m:
            a, b = int(m.group(2)), int(m.group(4))
            out += [f"P1-T-{m.group(1)}{i:02d}" for i in range(a, b+1)]; continue
        m = re.match(r"P1-T-(RK\d+)([a-z](?:/[a-z])*)$", part)
        if m:
            out += [f"P1-T-{m.group(1)}{s}" for s in m.group(2).split("/")]; continue
        m = re.match(r"(P1-T\d+-NEG)-\*$", part)
        if m: out.append(m.group(1)); continue
        if part == "P1-T-NEG-*":
            out += [f"INV-0{i}" for i in range(1, 9)]; continue
        out.append(part)
    return out

entries = {}
for t in tasks:
    for tid in expand(t["tests"]):
        e = entries.setdefault(tid, dict(tasks=[], reqs=[], oracles=[], prio="P1"))
        e["tasks"].append(t)
        for r in t["reqs"]:
            if r not in e["reqs"]: e["reqs"].append(r)
        for o in t["oracles"]:
            if o not in e["oracles"]: e["oracles"].append(o)
        if t["prio"] == "P0": e["prio"] = "P0"
# RK ids listed only by number in task 29: keep the lettered ones when they exist.
for rk in [k for k in entries if re.fullmatch(r"P1-T-RK\d\d", k)]:
    if any(k.startswith(rk) and k != rk for k in entries): del entries[rk]
# Ids our tests carry that the seed names only through a range or a parent.
if "P1-T09-NEG" not in entries:
    e = dict(entries["P1-T09"]); entries["P1-T09-NEG"] = e
for inv in range(1, 9):
    i = f"INV-0{inv}"
    t29 = [t for t in tasks if t["id"] == "P1-TASK-29"]
    e = entries.setdefault(i, dict(tasks=t29, reqs=[], oracles=list(t29[0]["oracles"]), prio="P0"))
    e["reqs"] = [i] + [r for r in e["reqs"] if r != i]

d = json.load(open(listing))
tests = []
for bid, s in d["rust-suites"].items():
    for n in s["testcases"]:
        tests.append((bid, s["kind"], n))

def prefix(tid):
    if tid.startswith("INV-"): return "inv" + tid[4:] + "_"
    return tid.lower().replace("-", "_") + "_"

# Bindings: the test-name prefix of the id, plus hand-made bindings for invariants.
EXTRA = {"INV-01": ["p1_t01_neg_*"], "INV-02": ["p1_t02_neg_*"], "INV-03": ["p1_t05_neg_*", "p1_t07_neg_*"],
         "INV-04": ["p1_t09_neg_*"],
         "P1-T-CC02": ["p1_t29_*"], "P1-T-CC04": ["p1_t41_*"]}
PLANNED = {}
for k in entries:
    if k.startswith("P1-H"): PLANNED[k] = 4 if k in ("P1-H07", "P1-H08") else 5
    m = re.match(r"P1-T(\d\d)$", k)
    if m and (11 <= int(m.group(1)) <= 17 or int(m.group(1)) == 40): PLANNED[k] = 4
    if m and 19 <= int(m.group(1)) <= 27: PLANNED[k] = 6
    if m and 36 <= int(m.group(1)) <= 39: PLANNED[k] = 7
    if re.match(r"P1-T-RK0[27]", k): PLANNED[k] = 7
    if re.match(r"P1-T-RK01", k): PLANNED[k] = 4
    if re.match(r"P1-T-RK0[345]", k): PLANNED[k] = 5
    if k in ("INV-05", "INV-06"): PLANNED[k] = 4

def key(k):
    order = {"P1-H": 0, "P1-T": 1, "INV": 3}
    return (0 if k.startswith("P1-H") else 2 if k.startswith("INV") else 1, re.sub(r"(\d+)", lambda m: m.group(1).zfill(3), k))

out = ["# The test catalogue: one entry per test id of the requirement documents.",
       "# Reviewed like code. `autobiz suite --check-catalog` checks it against the",
       "# tests nextest lists; see suites/README.md for the format.",
       "",
       "version = 1", ""]
out += open(sys.argv[3]).read().rstrip().splitlines() + [""]
entries.pop("—", None); entries.pop("", None)
for k in sorted(entries, key=key):
    e = entries[k]
    title = "; ".join(dict.fromkeys(t["title"] for t in e["tasks"])) 
    if k.startswith("INV-"): title = f"negative tests of {k}: {title}"
    if k.endswith("-NEG"): title = "negative cases: " + title
    pats = EXTRA.get(k, []) or [prefix(k) + "*"]
    bound = [t for t in tests for p in pats if re.fullmatch(p.replace("*", ".*"), t[2].rsplit("::", 1)[-1])]
    planned = k in PLANNED and not bound
    if k.startswith("P1-H"): stage = "hygiene"
    elif planned and PLANNED[k] == 6: stage = "golden"
    elif bound and all(t[1] == "lib" for t in bound): stage = "unit"
    else: stage = "integration_internal"
    out.append("[[test]]")
    out.append(f'id = "{k}"')
    out.append(f'title = {json.dumps(title)}')
    out.append(f'priority = "{e["prio"]}"')
    out.append(f'stage = "{stage}"')
    out.append(f'oracles = {json.dumps(e["oracles"])}')
    out.append(f'requirements = {json.dumps(e["reqs"])}')
    out.append(f'tasks = {json.dumps([t["id"] for t in e["tasks"]])}')
    if planned:
        out.append('status = "planned"')
        out.append(f'issue = {PLANNED[k]}')
        out.append('tests = []')
    else:
        if not bound: print("UNBOUND", k, file=sys.stderr)
        out.append(f'tests = {json.dumps(pats)}')
    out.append("")
print("\n".join(out))
