"""Purification on a protected set: latent distortion and reconstruction error before and after.

Prints the table of lightning_cat.studies.purification for every purifier (or --purifiers): the
protected images unpurified, each purifier on the protected images and on the clean images, all
measured against the clean images under one VAE.

    python benchmarks/purification_fidelity.py          # the CAT testbed (tests/data/testbed), ~2 min
    python benchmarks/purification_fidelity.py --model sd21-base \
        --clean data/subject --protected outputs/protect/aspl.sd21 --resolution 512 \
        --purifier-configs sd21 --device cuda

Purifier options come from configs/purify/<name>.<--purifier-configs>.yaml (the `tiny` ones run
offline: their diffusion models are the random `tiny` / `tiny-upscaler`, IMPRESS's LPIPS backbone
is random). IMPRESS always uses --model's VAE, the one the study measures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
TESTBED = REPO / "tests" / "data" / "testbed"
WEIGHT_FREE = ("jpeg", "blur", "resize", "tv")


def purifier_options(name: str, flavour: str) -> dict:
    """``init_args`` of the purifier in configs/purify/<name>.<flavour>.yaml."""
    path = REPO / "configs" / "purify" / f"{name}.{flavour}.yaml"
    if not path.is_file():
        raise SystemExit(f"no purifier config {path} (choose --purifier-configs tiny or sd21)")
    config = yaml.safe_load(path.read_text())
    return dict(config["model"]["init_args"]["purifier"].get("init_args") or {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TESTBED), help="VAE: diffusers folder, hub id or tiny")
    parser.add_argument("--clean", default=str(TESTBED / "clean"))
    parser.add_argument("--protected", default=str(TESTBED / "protected"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--purifiers", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--purifier-configs", default="tiny", help="tiny or sd21 (configs/purify/<name>.<this>.yaml)")
    parser.add_argument("--impress-iterations", type=int, default=None, help="override IMPRESS's iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    import torch

    from lightning_cat.datamodules.datasets import PairedImageDataset
    from lightning_cat.diffusion import load_vae
    from lightning_cat.images import ImageTransform
    from lightning_cat.purification import PURIFIERS, build_purifier
    from lightning_cat.studies.purification import format_purification_table, purification_study

    torch.set_num_threads(args.threads)
    names = args.purifiers.split(",") if args.purifiers else list(PURIFIERS)
    unknown = sorted(set(names) - set(PURIFIERS))
    if unknown:
        raise SystemExit(f"unknown purifiers {unknown}; choose from {sorted(PURIFIERS)}")
    purifiers = {}
    for name in names:
        # the weight-free filters have one config for every scale (their .tiny.yaml)
        options = purifier_options(name, "tiny" if name in WEIGHT_FREE else args.purifier_configs)
        if name == "impress":
            options["pretrained_model_name_or_path"] = args.model
            if args.impress_iterations is not None:
                options["iterations"] = args.impress_iterations
        purifiers[name] = build_purifier(name, **options)

    pairs = PairedImageDataset(args.clean, args.protected, ImageTransform(resolution=args.resolution))
    items = [pairs[index] for index in range(len(pairs))]
    clean = torch.stack([item["clean"] for item in items]).to(args.device)
    protected = torch.stack([item["image"] for item in items]).to(args.device)
    stems = [Path(item["path"]).stem for item in items]
    vae = load_vae(args.model).requires_grad_(False).eval().to(args.device)

    start = time.time()
    rows = purification_study(vae, clean, protected, purifiers, stems, seed=args.seed)
    seconds = time.time() - start
    print(
        f"\nPurification study: VAE {args.model}; {len(stems)} images, {args.resolution} px; "
        f"purifier configs '{args.purifier_configs}' ({seconds:.0f} s)\n"
    )
    print(format_purification_table(rows))
    if args.out is not None:
        record = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": round(seconds)}
        record["purifiers"] = {name: purifier.params() for name, purifier in purifiers.items()}
        record["rows"] = [{"name": row.name, **row.metrics} for row in rows]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
