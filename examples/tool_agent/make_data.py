"""Write the example's problem sets (data/train.jsonl, data/held_out.jsonl) from fixed templates and a fixed seed.

The files are shipped; this script documents how they were made and re-creates them byte for byte:

    python examples/tool_agent/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (template, operation); {a} and {b} are the numbers, the answer is a <op> b.
TEMPLATES = [
    ("A box holds {a} pens. How many pens are in {b} boxes?", "*"),
    ("A farm has {a} rows of {b} trees. How many trees are there?", "*"),
    ("Each ticket costs {a} dollars. How much do {b} tickets cost?", "*"),
    ("A shop sold {a} cups on Monday and {b} cups on Tuesday. How many cups did it sell?", "+"),
    ("Tom has {a} stamps and Ana has {b} stamps. How many stamps do they have together?", "+"),
    ("A library had {a} books and bought {b} more. How many books does it have now?", "+"),
    ("A tank holds {a} liters. {b} liters are used. How many liters are left?", "-"),
    ("Sara had {a} dollars and spent {b} dollars. How many dollars does she have left?", "-"),
]


def make(seed: int, n: int) -> list[dict[str, object]]:
    """`n` problems drawn from the templates (products of two 2-digit numbers, sums and differences of 3-digit)."""
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        template, op = rng.choice(TEMPLATES)
        if op == "*":
            a, b = rng.randint(12, 49), rng.randint(12, 49)
            answer = a * b
        elif op == "+":
            a, b = rng.randint(120, 899), rng.randint(120, 899)
            answer = a + b
        else:
            a = rng.randint(300, 999)
            b = rng.randint(100, a - 50)
            answer = a - b
        problems.append({"question": template.format(a=a, b=b), "answer": answer, "expression": f"{a} {op} {b}"})
    return problems


def main() -> None:
    train = make(seed=1, n=256)
    held_out_all = make(seed=2, n=400)
    seen = {p["question"] for p in train}
    held_out = [p for p in held_out_all if p["question"] not in seen][:64]
    for name, rows in (("train", train), ("held_out", held_out)):
        path = HERE / "data" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"{path}: {len(rows)} problems")


if __name__ == "__main__":
    main()
