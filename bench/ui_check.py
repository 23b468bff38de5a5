"""What a new user sees: a short search, then MLflow's UI and optuna-dashboard in headless Chromium.

    python bench/ui_check.py --python .venv/bin/python [--trials 10] [--out bench/results/ui_check.json]

Run it with a Python that has Playwright (`pip install playwright==1.63.0`; Chromium from the OS: `apt-get install
chromium`, or pass --chromium); the search itself runs with --python (the project's venv, optuna-dashboard from
its `dashboard` extra or --optuna-dashboard). Records, with screenshots under bench/results/ui_check/:
- the printed MLflow URL: where it lands, the page's heading, the runs table's column headers and first rows;
- the experiment's plain URL (#/experiments/ID): where MLflow 3.17 sends it (its GenAI overview);
- trial runs: status and outcome tag per run, each run's duration against the trial's own seconds, the realised
  keep fraction of the uniform-L1 baseline (its shares are all 1.0);
- optuna-dashboard: the study's user attributes and the parameter names on its importance chart.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._provenance import provenance  # noqa: E402

RESULTS = REPO / "bench" / "results" / "ui_check.json"
SHOTS = REPO / "bench" / "results" / "ui_check"
MLFLOW_PORT, DASHBOARD_PORT = 5071, 8071


def serve(cmd: list[str], url: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return proc
        except OSError:
            time.sleep(2)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not answer at {url}: {log.read_text()[-2000:]}")


def page_facts(browser, url: str, shot: Path, *, ready: str, settle_s: float = 3) -> dict:
    """ready: a selector (or text=...) that shows the page has rendered (the UIs fetch and render client-side)."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url, timeout=300_000)          # minutes, not seconds: a 2-core machine shared with other jobs
    page.wait_for_selector(ready, timeout=300_000)
    time.sleep(settle_s)
    page.screenshot(path=str(shot), full_page=True)
    headers = [h.strip() for h in page.locator("[role=columnheader]").all_inner_texts() if h.strip()]
    facts = {"url_requested": url, "url_landed": page.url, "headings": page.locator("h1, h2").all_inner_texts()[:6],
             "column_headers": list(dict.fromkeys(headers)), "text": page.inner_text("body")[:6000],
             "screenshot": str(shot.relative_to(REPO))}
    page.close()
    return facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"), help="the project's Python")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    ap.add_argument("--optuna-dashboard", default=None, help="optuna-dashboard executable (default: beside --python)")
    ap.add_argument("--root", default=None, help="keep the search here (reused when it already holds one)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    root = Path(args.root or tempfile.mkdtemp(prefix="edgeprune-ui-"))
    bindir = Path(args.python).parent
    run, log = root / "ui", root / "launch.log"
    if not (run / "results.json").is_file():       # --root of an earlier check: its search is reused
        launch = subprocess.run([args.python, "-m", "search", "launch", "--trials", str(args.trials), "--experiment",
                                 "ui", "--root", str(root)], capture_output=True, text=True, cwd=REPO)
        if launch.returncode != 0:
            raise SystemExit(launch.stderr[-3000:])
        log.write_text(launch.stdout)
    stdout = log.read_text()
    printed = re.search(r"MLflow afterwards: .* then open (\S+)", stdout).group(1)
    state = json.loads((run / "state.json").read_text())
    exp_id = state["mlflow_experiment_id"]
    mlflow = serve([str(bindir / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{run / 'mlflow.db'}",
                    "--artifacts-destination", str(run / "mlartifacts"), "--port", str(MLFLOW_PORT)],
                   f"http://127.0.0.1:{MLFLOW_PORT}/", root / "mlflow.log")
    dashboard_exe = args.optuna_dashboard or str(bindir / "optuna-dashboard")
    dashboard = serve([dashboard_exe, f"sqlite:///{run / 'optuna.db'}", "--port", str(DASHBOARD_PORT)],
                      f"http://127.0.0.1:{DASHBOARD_PORT}/dashboard", root / "dashboard.log")
    SHOTS.mkdir(parents=True, exist_ok=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), **provenance(), "trials": args.trials,
           "printed_url": printed, "launch_tail": stdout.splitlines()[-12:]}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            url = printed.replace(":5000/", f":{MLFLOW_PORT}/")
            out["mlflow_printed_url"] = page_facts(browser, url, SHOTS / "mlflow_runs.png",
                                                   ready="[role=columnheader] >> text=score")
            out["mlflow_plain_url"] = page_facts(browser, f"http://127.0.0.1:{MLFLOW_PORT}/#/experiments/{exp_id}",
                                                 SHOTS / "mlflow_plain.png", ready="text=Overview")
            out["optuna_dashboard"] = page_facts(browser, f"http://127.0.0.1:{DASHBOARD_PORT}/dashboard/studies/1",
                                                 SHOTS / "optuna_dashboard.png", ready="text=Study User Attributes")
            browser.close()
    finally:
        for proc in (mlflow, dashboard):
            proc.terminate()
    out["runs"] = runs_facts(args.python, run, exp_id)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({k: out[k] for k in ("printed_url", "runs")}, indent=1))
    print("columns:", out["mlflow_printed_url"]["column_headers"])


RUNS_SCRIPT = """
import json, sys
from mlflow.tracking import MlflowClient
c = MlflowClient(sys.argv[1])
rows = []
for r in c.search_runs([sys.argv[2]]):
    if "mlflow.parentRunId" not in r.data.tags:
        rows.append({"parent": True, "params": r.data.params})
        continue
    rows.append({"name": r.info.run_name, "status": r.info.status, "outcome": r.data.tags.get("outcome"),
                 "duration_s": (r.info.end_time - r.info.start_time) / 1000, "start_ms": r.info.start_time,
                 "end_ms": r.info.end_time, "trial_seconds": r.data.metrics.get("trial_seconds"),
                 "kept_fraction": r.data.params.get("kept_fraction"),
                 "shares": sorted({v for k, v in r.data.params.items() if "_share" in k})})
print(json.dumps(rows))
"""


def runs_facts(python: str, run: Path, exp_id: str) -> dict:
    rows = json.loads(subprocess.run([python, "-c", RUNS_SCRIPT, f"sqlite:///{run / 'mlflow.db'}", exp_id],
                                     capture_output=True, text=True, check=True).stdout)
    children = [r for r in rows if not r.get("parent")]
    ends = sorted(r["end_ms"] for r in children)
    return {"parent_params": next(r["params"] for r in rows if r.get("parent")), "trial_runs": children,
            "statuses": sorted({(r["status"], r["outcome"]) for r in children}),
            "end_times_span_s": (ends[-1] - ends[0]) / 1000 if ends else None}


if __name__ == "__main__":
    main()
