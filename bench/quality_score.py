"""Score the quality benchmark's test rows with a model the fine-tune job published (a subprocess of
bench_quality.py, so that torch runs niced, with the benchmark's threads, and stops on Ctrl-C).

The fine-tune job evaluates only on its own evaluation split, which the benchmark sets to the
validation split (early stopping, restoreBest and calibration watch it); the test split is never
shown to the job, so its predictions come from the published model, loaded the way serving loads it
(:func:`sampleforge.jobs.finetune.published.load_published`).

    python bench/quality_score.py MODEL_DIR ROWS.jsonl COLUMNS_JSON OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def item_text(row: dict[str, Any], columns: dict[str, Any]) -> str:
    """The item as the fine-tune job renders it: the item text, then `` | attribute: value`` for each
    attribute column that has a value (jobs/finetune/data.py)."""
    text = str(row[columns["item"]]).strip()
    for attribute in columns.get("attributes", []):
        value = row.get(attribute)
        if value is not None and str(value).strip():
            text += f" | {attribute}: {str(value).strip()}"
    return text


def score(model_dir: Path, rows: list[dict[str, Any]], columns: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from sampleforge.jobs.finetune.calibration import Decision
    from sampleforge.jobs.finetune.published import load_published

    model = load_published(model_dir)
    classes = tuple(model.description["labels"]["classes"])
    grades = model.description["labels"].get("classGrades") or list(range(len(classes)))
    queries = [str(r[columns["query"]]).strip() for r in rows]
    items = [item_text(r, columns) for r in rows]
    logits = model.logits(queries, items).astype(np.float64)
    probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    predicted = Decision.from_json(model.description.get("calibration"), classes).predict(probabilities)
    index = {c: i for i, c in enumerate(classes)}
    return {"classes": list(classes), "classGrades": list(grades), "queries": queries,
            "labels": [index[str(r[columns["label"]])] for r in rows],
            "grades": [float(grades[index[str(r[columns["label"]])]]) for r in rows],
            "probabilities": probabilities.round(6).tolist(), "predicted": [int(p) for p in predicted],
            "calibration": model.description.get("calibration")}


def main(argv: list[str]) -> int:
    model_dir, rows_path, columns, out = Path(argv[0]), Path(argv[1]), json.loads(argv[2]), Path(argv[3])
    rows = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out.write_text(json.dumps(score(model_dir, rows, columns)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
