#!/usr/bin/python3
"""CPython's own test_subprocess, test_os and test_posix (and test_pty,
test_asyncio.test_subprocess, and ten more: see DEFAULT_SUITES), run natively and then with
every launch routed into a uid-0 context; prints every test case whose result differs.

    sudo /usr/bin/python3 scripts/cpython-suites.py [--suites test_os ...] [--json FILE]

Runs as root, on Debian's /usr/bin/python3 (3.11) with libpython3.11-testsuite installed
(scripts/test.sh installs it). Needs `cargo build --release` first. Without --socket it
starts its own broker (target/release/ctx-broker on a temp socket) with one context:

    [contexts.root0]
    user = "root"
    cwd = "inherit"
    inherit_env = ["*"]
    allow = { uids = [0] }

Each suite runs as its own `python3 -m test -v --junit-xml F SUITE` process (with a bound
on each case, see REGRTEST_WITH_CASE_TIMEOUT), once natively
and once as `ctx run --route-to root0 -- python3 -m test ...` with the same flags (regrtest's
own -j is not used: its worker processes would be routed launches, and a routed process's
own children run locally, so the tests themselves would no longer be routed). --jobs N runs
N of these processes at once. A case still running after --test-timeout seconds (60) is
a "hang": regrtest's faulthandler dumps its traceback and ends the process, and the cases
it did not reach (from `--list-cases`) run in a continuation run. The test cases that
passed natively and did not pass routed are run again, routed, on their own (--rerun,
default 1) to tell a stable difference from a flaky one.

Output: per suite the counts and wall times, then every difference with its failure text.
--json FILE writes the same as data (the Rust test tests/tests/cpython_suites.rs reads it).
Exit status: 0 when every case that passed natively passed routed (first run or rerun),
1 otherwise, 2 on a harness error.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The three the issue names, and two more that launch processes: a terminal one and
# asyncio's subprocess transport.
DEFAULT_SUITES = ["test_subprocess", "test_os", "test_posix", "test_pty",
                  "test_asyncio.test_subprocess",
                  # Added after helper-104 ran them (and 40 more) with no difference: the
                  # signal, crash and command-line suites, and those launching the most.
                  "test_signal", "test_faulthandler", "test_cmd_line",
                  "test_cmd_line_script", "test_source_encoding", "test_compileall",
                  "test_c_locale_coercion", "test_utf8_mode", "test_sys", "test_popen"]
CONTEXT = "root0"
CONFIG = """[broker]
socket_mode = "0600"

[contexts.root0]
user = "root"
cwd = "inherit"
inherit_env = ["*"]
allow = { uids = [0] }
"""

PASS, FAIL, ERROR, SKIP, XFAIL, XPASS, HANG, MISSING = (
    "pass", "fail", "error", "skip", "xfail", "xpass", "hang", "missing")


# `python3 -m test` with a bound on each test case rather than regrtest's --timeout, which
# bounds a whole test file: faulthandler dumps the traceback of a case still running after
# TIMEOUT seconds and ends the process (the run's -v log then names the case).
REGRTEST_WITH_CASE_TIMEOUT = """\
import faulthandler, sys, unittest
timeout = float(sys.argv.pop(1))
run = unittest.TestCase.run
def bounded_run(self, result=None):
    faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        return run(self, result)
    finally:
        faulthandler.cancel_dump_traceback_later()
if timeout > 0:
    unittest.TestCase.run = bounded_run
from test.libregrtest import main
main()
"""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- the broker -------------------------------------------------------------------------

class Broker:
    def __init__(self, bin_dir, tmp):
        self.bin_dir = bin_dir
        self.dir = os.path.join(tmp, "broker")
        os.mkdir(self.dir)
        os.chmod(self.dir, 0o755)
        self.config = os.path.join(self.dir, "contexts.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        self.socket = os.path.join(self.dir, "broker.sock")
        self.audit_log = os.path.join(self.dir, "audit.jsonl")
        self.stderr_path = os.path.join(self.dir, "broker.stderr")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [os.path.join(bin_dir, "ctx-broker"), "--config", self.config,
                 "--socket", self.socket, "--state-dir", os.path.join(self.dir, "state"),
                 "--audit-log", self.audit_log],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"ctx-broker exited at start ({self.proc.returncode}):\n"
                                 + open(self.stderr_path).read())
            st = subprocess.run([os.path.join(bin_dir, "ctx"), "--socket", self.socket,
                                 "status"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if st.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("ctx-broker did not answer `ctx status` within 10 s:\n"
                                 + open(self.stderr_path).read())
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- one run of one suite -----------------------------------------------------------------

def base_id(name):
    """A subtest's id ("test.x.C.test_y (n=1)") counts as its test's."""
    return name.split(" (", 1)[0]


def parse_xml(path):
    """{test id: (status, text)} from regrtest's --junit-xml file."""
    results = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        if not tc.get("name"):
            continue  # a failing subtest: parse_log_failures finds it in the log
        name = base_id(tc.get("name"))
        status, text = PASS, ""
        for child in tc:
            if child.tag == "skipped":
                status, text = SKIP, child.text or ""
            elif child.tag in ("failure", "error"):
                status = FAIL if child.tag == "failure" else ERROR
                text = (child.text or child.get("message") or "").strip()
            elif child.tag == "output" and status == PASS:
                status, text = XFAIL, (child.text or "").strip()
        if tc.get("outcome") == "UNEXPECTED_SUCCESS":
            status = XPASS
        # A failing subtest makes its whole test fail; keep the first failure's text.
        old = results.get(name)
        if old is None or rank(status) > rank(old[0]):
            results[name] = (status, text)
        elif status in (FAIL, ERROR) and old[0] in (FAIL, ERROR):
            results[name] = (old[0], old[1] + "\n" + text)
    return results


def rank(status):
    return {PASS: 0, XFAIL: 0, SKIP: 1, XPASS: 2, FAIL: 3, ERROR: 4, HANG: 5}.get(status, 6)


def parse_log_failures(path):
    """{test id: (status, text)} from the FAIL:/ERROR: blocks at the end of the -v log.

    A failing subtest (`with self.subTest(...)`) reaches regrtest's XML as an empty
    <testcase/>: unittest's addSubTest bypasses addFailure. The log names it."""
    with open(path, errors="replace") as f:
        text = f.read()
    found = {}
    blocks = re.split(r"(?m)^={70}\n", text)
    for block in blocks[1:]:
        m = re.match(r"(FAIL|ERROR): (\w+) \(([\w.]+)\)([^\n]*)\n-{70}\n", block)
        if not m:
            continue
        body = block[m.end():]
        end = re.search(r"(?m)^-{70}$", body)
        body = (body[:end.start()] if end else body).strip()
        name = m.group(3) if m.group(3).endswith("." + m.group(2)) else \
            f"{m.group(3)}.{m.group(2)}"
        status = FAIL if m.group(1) == "FAIL" else ERROR
        head = f"{m.group(1)}: {m.group(2)}{m.group(4)}\n"
        old = found.get(name)
        found[name] = (max(status, old[0], key=rank) if old else status,
                       (old[1] + "\n\n" if old else "") + head + body)
    return found


def parse_log(path):
    """Best effort when no XML was written (the run timed out or crashed): the -v lines.

    A case that was still running when regrtest's --timeout fired is HANG, with the
    traceback faulthandler dumped."""
    results = {}
    with open(path, errors="replace") as f:
        text = f.read()
    heads = list(re.finditer(r"^(\w+) \(([\w.]+)\)(?:\n[^\n]*?)? \.\.\. ", text, re.M))
    for i, m in enumerate(heads):
        stop = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        tail = text[m.end():stop]
        word = re.search(r"(?m)(ok|FAIL|ERROR|expected failure|unexpected success"
                         r"|skipped)(?: .*)?$", tail)
        timeout = re.search(r"(?m)^Timeout \(\d+:\d\d:\d\d\)!$", tail)
        name = base_id(m.group(2))
        if not name.endswith("." + m.group(1)):
            name = f"{name}.{m.group(1)}"
        if timeout and (not word or timeout.start() < word.start()):
            dump = tail[timeout.start():].strip().splitlines()
            results[name] = (HANG, "\n".join(dump[:12]))
            continue
        status = {"ok": PASS, "FAIL": FAIL, "ERROR": ERROR, "skipped": SKIP,
                  "expected failure": XFAIL, "unexpected success": XPASS}.get(
                      word.group(1) if word else "", MISSING)
        results[name] = (status, "(from the verbose log: no XML was written)")
    return results


def routed_launches(audit_log):
    """How many launches the broker has run so far (its audit log's exec events)."""
    if not audit_log:
        return 0
    try:
        with open(audit_log, "rb") as f:
            return sum(1 for line in f if b'"event":"exec"' in line)
    except OSError:
        return 0


def run_suite(args, suite, mode, out_dir, socket, match_file=None, tag=""):
    """Runs one suite natively or routed; returns a dict with results and timings."""
    stem = f"{suite}.{mode}{tag}"
    xml_path = os.path.join(out_dir, stem + ".xml")
    log_path = os.path.join(out_dir, stem + ".log")
    work = os.path.join(out_dir, stem + ".work")
    os.mkdir(work)
    cmd = [args.python, "-c", REGRTEST_WITH_CASE_TIMEOUT, str(args.test_timeout),
           "-v", "--junit-xml", xml_path]
    if match_file:
        cmd += ["--matchfile", match_file]
    cmd.append(suite)
    if mode == "routed":
        cmd = [os.path.join(args.bin_dir, "ctx"), "--socket", socket, "run",
               "--route-to", CONTEXT, "--"] + cmd
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "CTX_ROUTE", "CTX_SOCKET", "CTX_PASSTHROUGH"):
        env.pop(k, None)
    launches_before = routed_launches(args.audit_log) if mode == "routed" else 0
    start = time.monotonic()
    with open(log_path, "wb") as out:
        shown = [a if a != REGRTEST_WITH_CASE_TIMEOUT else "REGRTEST_WITH_CASE_TIMEOUT"
                 for a in cmd]
        out.write(("$ " + " ".join(shown) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(args.suite_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            rc = proc.wait()
            out.write(f"\n*** cpython-suites: killed after {args.suite_timeout} s\n".encode())
        # What a timed-out run left behind in its group (a hung shim, say) goes too.
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
    wall = time.monotonic() - start
    launches = routed_launches(args.audit_log) - launches_before if mode == "routed" else 0
    if os.path.exists(xml_path):
        results, source = parse_xml(xml_path), "xml"
    else:
        results, source = parse_log(log_path), "log"
    for name, (status, text) in parse_log_failures(log_path).items():
        cur = results.get(name)
        if cur is None or cur[0] in (PASS, MISSING, SKIP) or source == "log":
            results[name] = (status, text)
    shutil.rmtree(work, ignore_errors=True)
    routed = f", {launches} launches routed" if mode == "routed" else ""
    log(f"  {suite:16} {mode + tag:14} rc={rc} {wall:6.1f} s  {len(results)} cases "
        f"({source}{routed})")
    return {"suite": suite, "mode": mode, "rc": rc, "wall": wall, "source": source,
            "log": log_path, "results": results, "launches": launches}


# --- comparing ------------------------------------------------------------------------------

def passed(status):
    return status in (PASS, XFAIL)


def main():
    # Back to their defaults, as `scripts/test.sh` sets them for the tests: a shell's
    # background job starts with SIGINT and SIGQUIT ignored, which every suite process
    # would inherit natively and routed alike, hiding what test_signal and test_subprocess
    # check of them (helper-104).
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", nargs="+", default=DEFAULT_SUITES)
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--bin-dir", default=os.path.join(REPO, "target", "release"))
    ap.add_argument("--socket", help="use this running broker (it must have the context "
                    f"{CONTEXT}) instead of starting one")
    ap.add_argument("--audit-log", help="with --socket: that broker's audit log, to count "
                    "the routed launches")
    ap.add_argument("--out", help="keep logs and XML here (default: a temp dir, removed "
                    "unless a difference is found)")
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--jobs", type=int, default=1, help="suite processes at once (>1: the "
                    "per-suite counts of routed launches overlap)")
    ap.add_argument("--rerun", type=int, default=1,
                    help="routed reruns of the cases that differ (0: none)")
    ap.add_argument("--max-continue", type=int, default=5,
                    help="runs of the cases a stopped run did not reach")
    ap.add_argument("--test-timeout", type=int, default=60,
                    help="seconds for one test case (0: unbounded)")
    ap.add_argument("--suite-timeout", type=int, default=1800,
                    help="seconds for one suite process before it is killed")
    ap.add_argument("--routed-only", action="store_true",
                    help="skip the native run (every case counts as passing natively)")
    args = ap.parse_args()

    if os.geteuid() != 0:
        raise SystemExit("cpython-suites: run as root (the broker switches uid)")
    for suite in args.suites:
        # A module (test_os), a package (test_asyncio) or a module in one
        # (test_asyncio.test_subprocess), as regrtest takes them.
        src = "/usr/lib/python3.11/test/" + suite.replace(".", "/")
        if args.python == "/usr/bin/python3" and not (
                os.path.exists(src + ".py") or os.path.isdir(src)):
            raise SystemExit(f"cpython-suites: {src}.py is missing: apt-get install "
                             "libpython3.11-testsuite (scripts/test.sh does)")
    for b in ("ctx", "ctx-broker", "libctx_interposer.so", "ctx-shim"):
        if not os.path.exists(os.path.join(args.bin_dir, b)):
            raise SystemExit(f"cpython-suites: {args.bin_dir}/{b} is missing: "
                             "cargo build --release")

    tmp = tempfile.mkdtemp(prefix="ctx-cpython-")
    os.chmod(tmp, 0o755)
    out_dir = args.out or tmp
    os.makedirs(out_dir, exist_ok=True)
    broker = None
    try:
        socket = args.socket
        if socket is None:
            broker = Broker(args.bin_dir, tmp)
            socket = broker.socket
            args.audit_log = broker.audit_log
        log(f"cpython-suites: {args.python}, suites {' '.join(args.suites)}, "
            f"logs in {out_dir}")
        report = compare(args, out_dir, socket)
    finally:
        if broker:
            broker.stop()
            if args.out:  # the broker's audit log and stderr join the logs
                for name in ("audit.jsonl", "broker.stderr"):
                    src = os.path.join(broker.dir, name)
                    if os.path.exists(src):
                        shutil.copy(src, os.path.join(args.out, name))
        if args.out:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print_report(report)
    if not args.out and not report["differences"]:
        shutil.rmtree(tmp, ignore_errors=True)
    elif not args.out:
        log(f"cpython-suites: logs (and the broker's audit log) kept in {tmp}")
    sys.exit(1 if any(d["stable"] for d in report["differences"]) else 0)


def list_cases(args, suite):
    """Every test id of a suite, as `python3 -m test --list-cases` names them."""
    out = subprocess.run([args.python, "-m", "test", "--list-cases", suite],
                         stdin=subprocess.DEVNULL, capture_output=True, check=True)
    return [line.strip() for line in out.stdout.decode().splitlines() if line.strip()]


def run_all(args, suite, mode, out_dir, socket, universe):
    """Runs a suite; when the run stopped early (a case hung past --test-timeout, or the
    interpreter crashed), runs the cases it did not reach, up to --continue times."""
    first = run_suite(args, suite, mode, out_dir, socket)
    results = dict(first["results"])
    runs = [first]
    for i in range(args.max_continue):
        unrun = [k for k in universe if k not in results]
        if not unrun:
            break
        mf = os.path.join(out_dir, f"{suite}.{mode}.cont{i + 1}.match")
        with open(mf, "w") as f:
            f.write("".join(k + "\n" for k in unrun))
        more = run_suite(args, suite, mode, out_dir, socket, match_file=mf,
                         tag=f".cont{i + 1}")
        runs.append(more)
        if not more["results"]:
            break
        results.update(more["results"])
    return {"suite": suite, "mode": mode, "results": results,
            "wall": sum(r["wall"] for r in runs), "launches": sum(r["launches"] for r in runs),
            "source": "+".join(r["source"] for r in runs), "rc": [r["rc"] for r in runs],
            "log": [r["log"] for r in runs]}


def compare(args, out_dir, socket):
    modes = ["routed"] if args.routed_only else ["native", "routed"]
    universe = {suite: list_cases(args, suite) for suite in args.suites}
    # Suite by suite, so that --jobs 2 runs a suite's two sides (the longest first) at once.
    jobs = [(s, m) for s in args.suites for m in modes]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        runs = list(pool.map(
            lambda j: run_all(args, j[0], j[1], out_dir, socket, universe[j[0]]), jobs))
    by = {(r["suite"], r["mode"]): r for r in runs}
    report = {"python": args.python, "suites": {}, "differences": [], "flaky": [],
              "routed_only_passes": []}
    for suite in args.suites:
        native = by.get((suite, "native"))
        routed = by[(suite, "routed")]
        nres = native["results"] if native else {k: (PASS, "") for k in universe[suite]}
        rres = routed["results"]
        diffs = sorted(k for k, (st, _) in nres.items()
                       if passed(st) and not passed(rres.get(k, (MISSING, ""))[0]))
        gains = sorted(k for k, (st, _) in rres.items()
                       if passed(st) and k in nres and nres[k][0] in (FAIL, ERROR, HANG))
        reruns = []
        remaining = diffs
        rerun_status = {k: [] for k in diffs}
        for i in range(args.rerun):
            if not remaining:
                break
            mf = os.path.join(out_dir, f"{suite}.rerun{i + 1}.match")
            with open(mf, "w") as f:
                f.write("".join(k + "\n" for k in remaining))
            rr = run_suite(args, suite, "routed", out_dir, socket, match_file=mf,
                           tag=f".rerun{i + 1}")
            reruns.append(rr)
            for k in remaining:
                rerun_status[k].append(rr["results"].get(k, (MISSING, ""))[0])
            remaining = [k for k in remaining
                         if not passed(rr["results"].get(k, (MISSING, ""))[0])]
        for k in diffs:
            st, text = rres.get(k, (MISSING, "not run routed"))
            entry = {"id": k, "suite": suite, "native": nres[k][0], "routed": st,
                     "reruns": rerun_status[k], "text": text, "stable": k in remaining}
            (report["differences"] if k in remaining else report["flaky"]).append(entry)
        report["routed_only_passes"] += gains

        def counts(res):
            c = {}
            for st, _ in res.values():
                c[st] = c.get(st, 0) + 1
            return c

        report["suites"][suite] = {
            "cases": len(universe[suite]),
            "native": None if native is None else {
                "rc": native["rc"], "wall": round(native["wall"], 1),
                "source": native["source"], "counts": counts(nres), "log": native["log"]},
            "routed": {"rc": routed["rc"], "wall": round(routed["wall"], 1),
                       "source": routed["source"], "counts": counts(rres),
                       "log": routed["log"], "launches": routed["launches"]},
            "reruns": [{"wall": round(r["wall"], 1), "log": r["log"]} for r in reruns],
            "native_results": {k: v[0] for k, v in nres.items()},
            "routed_results": {k: v[0] for k, v in rres.items()},
        }
    # A flaky entry also stays in "differences" with stable = false, for one list to read.
    report["differences"] += report.pop("flaky")
    return report


def print_report(report):
    print("\n== CPython suites, native vs routed ==")
    for suite, s in report["suites"].items():
        n, r = s["native"], s["routed"]
        ntxt = "-" if n is None else f"{n['wall']:.1f} s {fmt_counts(n['counts'])}"
        print(f"{suite:16} native {ntxt}\n{'':16} routed {r['wall']:.1f} s "
              f"{fmt_counts(r['counts'])}; {r['launches']} launches routed")
    diffs = report["differences"]
    stable = [d for d in diffs if d["stable"]]
    print(f"\n{len(stable)} case(s) pass natively and fail routed"
          f" (+{len(diffs) - len(stable)} that passed on rerun: flaky)")
    for d in diffs:
        flag = "" if d["stable"] else "  [flaky]"
        again = "".join(f", rerun {st}" for st in d["reruns"])
        print(f"\n--- {d['id']}: native {d['native']}, routed {d['routed']}{again}{flag}")
        text = d["text"].strip()
        lines = text.splitlines()
        if len(lines) > 40:
            lines = lines[:10] + ["    [...]"] + lines[-25:]
        print("\n".join("    " + line for line in lines))
    if report["routed_only_passes"]:
        print("\ncases that fail natively and pass routed:")
        for k in report["routed_only_passes"]:
            print("   ", k)


def fmt_counts(c):
    return ", ".join(f"{v} {k}" for k, v in sorted(c.items()))


if __name__ == "__main__":
    main()
