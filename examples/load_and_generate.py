"""Load an exported folder and generate with it: one call, every knob applied.

    python examples/load_and_generate.py autoeff-out/optimized --out grid.png
"""

from __future__ import annotations

import argparse
import json

import autoeff
from autoeff.report import save_grid


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--out", default="grid.png")
    a = p.parse_args(argv)

    pipe = autoeff.load(a.folder)  # verifies every file's sha256; reads JSON and safetensors only
    print("recipe:", json.dumps(pipe.autoeff_info["recipe"]["knobs"], indent=1)[:2000])
    print("measured:", json.dumps(pipe.autoeff_info["measured"].get("final") or {}, indent=1)[:1000])
    family = pipe.autoeff_info["model"]["family"]
    if family.startswith("digits"):
        images = pipe(class_labels=list(range(10)) * 4, output_type="pt").images
    else:
        images = pipe(prompt=["a photo of a red car"] * 2, output_type="pt").images
    save_grid(images, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
