"""Full fine-tuning of the encoder on Rotten Tomatoes labels, against the frozen encoder's head, in
the same run (the GPU check; it runs on CPU too, with fewer labels).

Needs torch, transformers, numpy and safetensors only (the lent GPU machine): the model and the data
come from ``.device/`` (``benchmarks/device_bundle.py``). The labels are split once (seed 0):
``--n-train`` for training, of which ``--n-calibration`` are kept out of the fine-tuning for the
temperature, and every other snippet for the test. Prints accuracy and ECE of the frozen head and of
the fine-tuned encoder (its own head, and the loop's head refitted on its embeddings), their ratios
to the frozen ones, and the training's speed, and writes them to ``$OUT/gpu_finetune.json``.

    PYTHONPATH=. python benchmarks/gpu_finetune.py --model .device/minilm --n-train 10000 --budget 300
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from connector.calibration import TemperatureScaler, expected_calibration_error, softmax
from connector.classifier import fit_softmax_head
from connector.encoder import TextEncoder
from connector.finetune import FinetuneConfig, finetune


def load(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    classes = sorted({r["label"] for r in rows})
    return [r["text"] for r in rows], np.array([classes.index(r["label"]) for r in rows]), classes


def scores(logits_cal: np.ndarray, y_cal: np.ndarray, logits_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Accuracy, and ECE before and after a temperature fitted on the calibration labels."""
    t = TemperatureScaler().fit(logits_cal, y_cal).temperature_
    raw, cal = softmax(logits_test), softmax(logits_test, t)
    return {"accuracy": float((raw.argmax(1) == y_test).mean()), "ece_raw": expected_calibration_error(raw, y_test),
            "ece": expected_calibration_error(cal, y_test), "temperature": float(t)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=".device/minilm")
    ap.add_argument("--data", type=Path, default=Path(".device/rotten_tomatoes.jsonl"))
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-calibration", type=int, default=1_000)
    ap.add_argument("--budget", type=float, default=300.0, help="fine-tuning wall seconds")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import torch

    texts, y, classes = load(args.data)
    order = np.random.default_rng(0).permutation(len(texts))
    train, test = order[:args.n_train], order[args.n_train:]
    cal, tune = train[:args.n_calibration], train[args.n_calibration:]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"{name}: {len(tune)} labels to fine-tune on, {len(cal)} for the temperature, {len(test)} test snippets")

    base = TextEncoder(args.model, device=device)
    t0 = time.perf_counter()
    xb = base.encode(texts)
    encode_s = time.perf_counter() - t0
    k = len(classes)
    coef, icpt = fit_softmax_head(xb[tune], y[tune], k)
    frozen = scores(xb[cal] @ coef.T + icpt, y[cal], xb[test] @ coef.T + icpt, y[test])

    cfg = FinetuneConfig(method="classifier", budget_s=args.budget, epochs=args.epochs, batch_size=args.batch_size,
                         seed=0)
    tuned = finetune([texts[i] for i in tune], [classes[c] for c in y[tune]], cfg, base=args.model, device=device,
                     progress=False)
    xf = tuned.encoder.encode(texts)
    head = tuned.head
    own = scores(xf[cal] @ head.coef.T + head.intercept, y[cal], xf[test] @ head.coef.T + head.intercept, y[test])
    coef2, icpt2 = fit_softmax_head(xf[tune], y[tune], k)
    refit = scores(xf[cal] @ coef2.T + icpt2, y[cal], xf[test] @ coef2.T + icpt2, y[test])
    steps = tuned.steps_done
    record = {"device": name, "n_tune": len(tune), "n_calibration": len(cal), "n_test": len(test),
              "frozen": frozen, "finetuned_own_head": own, "finetuned_loop_head": refit,
              "accuracy_ratio_own": own["accuracy"] / frozen["accuracy"],
              "accuracy_ratio_loop": refit["accuracy"] / frozen["accuracy"],
              "finetune": tuned.metadata(), "texts_per_s_training": steps * args.batch_size / max(tuned.train_s, 1e-9),
              "encode_texts_per_s": len(texts) / encode_s}
    print(f"frozen head:        accuracy {frozen['accuracy']:.4f}  ECE {frozen['ece_raw']:.4f} -> {frozen['ece']:.4f}")
    print(f"fine-tuned (own):   accuracy {own['accuracy']:.4f}  ECE {own['ece_raw']:.4f} -> {own['ece']:.4f}  "
          f"x{record['accuracy_ratio_own']:.3f}")
    print(f"fine-tuned (loop):  accuracy {refit['accuracy']:.4f}  ECE {refit['ece_raw']:.4f} -> {refit['ece']:.4f}  "
          f"x{record['accuracy_ratio_loop']:.3f}")
    print(f"{tuned.summary()}; {record['texts_per_s_training']:.0f} texts/s training, "
          f"{record['encode_texts_per_s']:.0f} texts/s encoding")
    out = Path(os.environ.get("OUT", "benchmarks/out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_finetune.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
