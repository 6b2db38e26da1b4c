"""Fine-tuned encoders against the frozen one on Rotten Tomatoes, few labels, a time budget (run by hand).

Data: the full Rotten Tomatoes corpus (deduplicated, 12,752 snippets). A fixed 2,000-snippet test
slice (the first 2,000 of a fixed shuffle) measures every setting; each training set is ``n``
snippets drawn at random (seeded by ``seed``) from the rest.

Settings, each followed by the loop's head (a ``TextClassifier`` built as ``retrain`` builds it:
``cross_fit`` temperature on 5-fold out-of-fold logits, ``C=10``, prior SD 1 on ``log T``, every
label counted as drawn at random, which these are):

- ``frozen``: the bundled MiniLM as it is (the baseline; always run, the ratios are against it);
- ``cosine`` / ``batch_hard`` / ``supcon``: contrastive fine-tuning (``connector.finetune``) then the head;
- ``classifier``: full fine-tuning with a softmax head (cross-entropy; an epoch for every 12 s of
  the budget, so a larger budget trains longer rather than stopping early), then the loop's head on
  the new embeddings; the jointly trained head's own accuracy and ECE are reported too (``own_*``).

A setting ending in ``/cal20`` fine-tunes on 80 % of the labels (stratified) and fits the loop's
temperature only on the other 20 % (``calibrate_on``), whose embeddings the fine-tuning never saw:
a temperature fitted on the labels the encoder was tuned on sees them separated better than any
new item will be.

Reported per run: held-out accuracy, macro-F1, ECE (15 bins), log loss, the fine-tuning's steps
and wall time, and the time to encode the test slice (texts a second, so the cost of re-encoding a
project follows). With ``--wait-quiet`` every timed run waits until no other simulation or benchmark
has run for 60 s (``pgrep -f "hitl simulate|benchmarks/"``, polled every 30 s) and other processes
used under 0.2 cores meanwhile (``/proc/stat`` less this process's own CPU time), records what it
waited for, and is measured again (``--attempts``) when another job ran or other processes used more
than 0.25 cores on average during it (``other_cores`` in the record). Results are merged into ``benchmarks/out/finetune.json`` (one
record per size, seed, setting and budget; a rerun replaces its record).

    PYTHONPATH=. python benchmarks/finetune.py --sizes 300 --seeds 0 --budgets 120 240 \\
        --settings cosine batch_hard supcon classifier --wait-quiet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from connector.classifier import TextClassifier, stratified_split
from connector.datasets import rotten_tomatoes
from connector.encoder import TextEncoder
from connector.finetune import FinetuneConfig, finetune
from connector.retraining import evaluate

OUT = Path(__file__).resolve().parent / "out" / "finetune.json"
PATTERN = "hitl simulate|benchmarks/"
CLASSES = ["fresh", "rotten"]


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def others_running() -> list[str]:
    """Command lines of other simulations and benchmarks (not this process or its parents)."""
    out = subprocess.run(["pgrep", "-af", PATTERN], check=False, capture_output=True, text=True).stdout
    mine = _ancestors()
    return [line for line in out.splitlines() if line and int(line.split()[0]) not in mine]


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy, and this process (all its threads) has used."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


def wait_quiet(enabled: bool, *, quiet_s: float = 60.0, poll_s: float = 30.0, max_other_cores: float = 0.2) -> dict:
    """Block until for ``quiet_s`` no other simulation or benchmark ran (:func:`others_running`) and
    other processes used at most ``max_other_cores`` of CPU on average; returns what was seen."""
    seen: set[str] = set()
    start = time.time()
    if enabled:
        quiet_since = None
        last = (time.time(), *cpu_seconds())
        while True:
            time.sleep(poll_s)
            now, busy, own = time.time(), *cpu_seconds()
            others_cores = ((busy - last[1]) - (own - last[2])) / (now - last[0])
            last = (now, busy, own)
            found = others_running()
            seen.update(found)
            if found or others_cores > max_other_cores:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now - poll_s
            if quiet_since is not None and now - quiet_since >= quiet_s:
                break
    return {"waited_s": round(time.time() - start, 1), "waited_for": sorted(seen),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


class Watch:
    """While a run is timed: polls :func:`others_running` every ``poll_s`` in a thread, and measures
    the CPU other processes used (``other_cores``: on average, in cores)."""

    def __init__(self, poll_s: float = 15.0) -> None:
        import threading

        self.seen: set[str] = set()
        self.other_cores = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(poll_s,), daemon=True)

    def _poll(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            self.seen.update(others_running())

    def __enter__(self) -> Self:
        self._start = (time.time(), *cpu_seconds())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.seen.update(others_running())
        now, busy, own = time.time(), *cpu_seconds()
        t0, busy0, own0 = self._start
        self.other_cores = ((busy - busy0) - (own - own0)) / max(now - t0, 1e-9)


def loop_head(encoder: TextEncoder, seed: int) -> TextClassifier:
    """The head as ``connector.retraining.retrain`` builds it with the default policy."""
    return TextClassifier(encoder, classes=CLASSES, C=10.0, calibration="cross_fit", folds=5,
                          min_calibration_labels=10, temperature_prior_sd=1.0, random_state=seed)


def score(encoder: TextEncoder, train: list[str], y_train: list[str], test: list[str], y_test: np.ndarray,
          seed: int, calibrate_on: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """The loop's head on ``encoder``'s embeddings: held-out metrics and the test embeddings."""
    t = time.perf_counter()
    x_train = encoder.encode(train)
    t_test = time.perf_counter()
    x_test = encoder.encode(test)
    encode_test_s = time.perf_counter() - t_test
    clf = loop_head(encoder, seed).fit_embeddings(x_train, y_train, texts=train, calibrate_on=calibrate_on)
    probs = clf.predict_proba_from_embeddings(x_test)
    m = {k: round(float(v), 4) for k, v in evaluate(probs, y_test).items() if k != "n"}
    m.update(temperature=round(float(clf.temperature_), 3), encode_test_s=round(encode_test_s, 2),
             encode_rate=round(len(test) / encode_test_s, 1), score_s=round(time.perf_counter() - t, 2))
    return m, x_test


def run_setting(setting: str, budget: float, train: list[str], y_train: list[str], test: list[str],
                y_test: np.ndarray, seed: int, args: argparse.Namespace) -> dict:
    name, _, variant = setting.partition("/")
    method = "classifier" if name == "classifier" else "contrastive"
    epochs = (args.classifier_epochs or budget / 12) if method == "classifier" else None
    cfg = FinetuneConfig(method=method, loss=name if method == "contrastive" else "cosine", budget_s=budget,
                         seed=seed, learning_rate=args.lr_classifier if method == "classifier" else args.lr,
                         epochs=epochs)
    tune_idx = np.arange(len(train))
    calibrate_on = None
    if variant == "cal20":
        y_codes = np.array([CLASSES.index(v) for v in y_train])
        tune_idx, held = stratified_split(y_codes, 0.2, seed=seed)
        calibrate_on = np.zeros(len(train), dtype=bool)
        calibrate_on[held] = True
    ft = finetune([train[i] for i in tune_idx], [y_train[i] for i in tune_idx], cfg, progress=args.progress)
    print("   ", ft.summary(), flush=True)
    m, x_test = score(ft.encoder, train, y_train, test, y_test, seed, calibrate_on)
    rec = {**m, **{k: v for k, v in ft.metadata().items() if k not in ("config", "base_model", "classes")},
           "config": ft.config.model_dump(exclude={"budget_s", "seed"})}
    if ft.head is not None:
        own = evaluate(ft.head.predict_proba(x_test), y_test)
        rec.update(own_accuracy=round(own["accuracy"], 4), own_ece=round(own["ece"], 4),
                   own_log_loss=round(own["log_loss"], 4))
    return rec


def load_results(out: Path) -> dict:
    if out.exists():
        return json.loads(out.read_text())
    return {"runs": []}


def save_record(out: Path, results: dict, rec: dict) -> None:
    key = ("n", "seed", "setting", "budget_s")
    results["runs"] = [r for r in results["runs"] if tuple(r.get(k) for k in key) != tuple(rec[k] for k in key)]
    results["runs"].append(rec)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[120.0, 240.0])
    ap.add_argument("--settings", nargs="+", default=["cosine", "classifier"])
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=2e-5, help="contrastive learning rate")
    ap.add_argument("--lr-classifier", type=float, default=3e-5)
    ap.add_argument("--classifier-epochs", type=float, default=None,
                    help="full fine-tuning's epochs (default: one for every 12 s of the budget)")
    ap.add_argument("--wait-quiet", action="store_true")
    ap.add_argument("--attempts", type=int, default=3,
                    help="with --wait-quiet: runs another job overlapped are measured again, up to this often")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--tag", default="", help="appended to the setting's name in the records (a variant: --tag @lr1e-4)")
    args = ap.parse_args()

    import torch

    ds = rotten_tomatoes(full=True)
    order = np.random.default_rng(12345).permutation(len(ds))
    test_idx, pool = order[:args.test], order[args.test:]
    test = [ds.texts[i] for i in test_idx]
    y_test = np.array([CLASSES.index(ds.labels[i]) for i in test_idx])
    results = load_results(args.out)
    results["meta"] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
                       "corpus": len(ds), "test": len(test), "pool": len(pool),
                       "test_majority": round(float(max(np.mean(y_test), 1 - np.mean(y_test))), 4)}
    frozen = TextEncoder()
    print(f"{len(ds)} snippets; test slice {len(test)} (majority {results['meta']['test_majority']:.3f}); "
          f"pool {len(pool)}; {os.cpu_count()} cores", flush=True)
    header = f"{'n':>4s} {'seed':>4s} {'setting':18s} {'budget':>6s} {'acc':>6s} {'x frozen':>8s} {'ECE':>6s} " \
             f"{'logloss':>7s} {'steps':>11s} {'ft s':>6s} {'enc/s':>6s}"
    for n in args.sizes:
        for seed in args.seeds:
            draw = np.random.default_rng(seed).choice(pool, n, replace=False)
            train = [ds.texts[i] for i in draw]
            y_train = [ds.labels[i] for i in draw]
            quiet = wait_quiet(args.wait_quiet)
            base, _ = score(frozen, train, y_train, test, y_test, seed)
            rec = {"n": n, "seed": seed, "setting": "frozen", "budget_s": None, **base, **quiet,
                   "when": datetime.now(UTC).isoformat(timespec="seconds")}
            save_record(args.out, results, rec)
            print(header)
            print(f"{n:4d} {seed:4d} {'frozen':18s} {'-':>6s} {base['accuracy']:6.3f} {1:8.3f} {base['ece']:6.3f} "
                  f"{base['log_loss']:7.3f} {'-':>11s} {'-':>6s} {base['encode_rate']:6.0f}", flush=True)
            for setting in args.settings:
                for budget in args.budgets:
                    for attempt in range(1, args.attempts + 1):
                        quiet = wait_quiet(args.wait_quiet)
                        rec = {"n": n, "seed": seed, "setting": setting + args.tag, "budget_s": budget, **quiet,
                               "when": datetime.now(UTC).isoformat(timespec="seconds"), "attempt": attempt}
                        with Watch() as watch:
                            rec.update(run_setting(setting, budget, train, y_train, test, y_test, seed, args))
                        rec["during_run"] = sorted(watch.seen)
                        rec["other_cores"] = round(watch.other_cores, 3)
                        if not (args.wait_quiet and (rec["during_run"] or watch.other_cores > 0.25)):
                            break
                        print(f"    other jobs ran meanwhile ({len(rec['during_run'])} simulations/benchmarks, "
                              f"{watch.other_cores:.2f} cores in all): measured again", flush=True)
                    rec["acc_ratio"] = round(rec["accuracy"] / base["accuracy"], 4)
                    rec["ece_ratio"] = round(rec["ece"] / base["ece"], 4) if base["ece"] else None
                    save_record(args.out, results, rec)
                    own = f"  (own head {rec['own_accuracy']:.3f}, ECE {rec['own_ece']:.3f})" if "own_accuracy" in rec else ""
                    print(f"{n:4d} {seed:4d} {setting + args.tag:18s} {budget:6.0f} {rec['accuracy']:6.3f} {rec['acc_ratio']:8.3f} "
                          f"{rec['ece']:6.3f} {rec['log_loss']:7.3f} {rec['steps_done']:5d}/{rec['steps_planned']:<5d} "
                          f"{rec['elapsed_s']:6.1f} {rec['encode_rate']:6.0f}{own}  [others: {rec['other_cores']:.2f} cores]",
                          flush=True)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
