"""Train a demo nnU-Net v2 model from scratch on synthetic phantoms.

Two models: ``pelvis-demo`` (one channel: T2) and ``pelvis-dixon-demo`` (two channels: T2 and
the Dixon water image resampled onto the T2 grid, as the gateway does at inference).

DEMONSTRATION ONLY: the model sees nothing but :mod:`gateway.demo.phantom` volumes and is not fit
for clinical use. It exists so that the gateway can be run end to end with a real nnU-Net.

Steps: write phantoms as an nnU-Net raw dataset (NIfTI via SimpleITK, as nnU-Net's SimpleITKIO
reads them) -> nnU-Net fingerprint, plan and preprocess -> shrink the plans to a tiny network ->
train with AdamW -> strip the checkpoint (fp16 weights, no optimizer state) -> write
``<out>/nnunet/`` and ``<out>/model.yaml`` -> evaluate held-out phantoms through the gateway's
own :class:`gateway.segment.NnUNetSegmenter`.

Full run (about 10 min on 2 CPU cores)::

    python scripts/train_pelvis_demo.py

    python scripts/train_pelvis_demo.py --model pelvis-dixon-demo

Quick run for CI (a loadable but untrained-looking model)::

    python scripts/train_pelvis_demo.py --epochs 2 --iterations 5 --train-cases 6 --out /tmp/m
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.demo.phantom import LABEL_NAMES, dice_scores, make_phantom, make_study  # noqa: E402
from gateway.imaging import resample_to  # noqa: E402

logger = logging.getLogger("train_pelvis_demo")

CONFIGURATION = "3d_fullres"
FOLD = "all"
HELD_OUT_SEED_BASE = 1_000_000  # evaluation phantoms; training seeds stay below it
FEATURES = (4, 8, 16, 32)

_NOT_CLINICAL = (
    "NOT FOR CLINICAL USE: it has never seen a patient image and its contours on real data are "
    "meaningless."
)
_LABELS = {
    1: {
        "name": "Prostate",
        "color": [255, 0, 0],
        "type": "ORGAN",
        "code": {"scheme": "SCT", "value": "41216001", "meaning": "Prostate"},
    },
    2: {
        "name": "Bladder",
        "color": [255, 255, 0],
        "type": "ORGAN",
        "code": {"scheme": "SCT", "value": "89837001", "meaning": "Bladder"},
    },
    3: {
        "name": "Rectum",
        "color": [0, 200, 255],
        "type": "ORGAN",
        "code": {"scheme": "SCT", "value": "34402009", "meaning": "Rectum"},
    },
}
_NNUNET = {
    "folder": "nnunet",
    "configuration": CONFIGURATION,
    "folds": [FOLD],
    "checkpoint": "checkpoint_final.pth",
    "use_mirroring": False,
    "tile_step_size": 0.5,
}
# Intended use: what the phantoms cover (axial-ish T2 of 2.5-4 mm slices over a pelvis FOV).
_GUARDRAILS = {
    "modality": ["MR"],
    "max_oblique_deg": 20,
    "slice_thickness_mm": [2.0, 4.5],
    "pixel_spacing_mm": [0.3, 2.0],
    "slices": [12, 80],
    "field_of_view_mm": [80, 400],
}
_T2 = {
    "name": "T2",
    "primary": True,
    "select": {"Modality": "^MR$", "SeriesDescription": "(?i)t2.*(tra|ax)"},
}
_WATER = {
    "name": "DixonWater",
    "select": {"Modality": "^MR$", "ImageType": ["DIXON", "WATER"]},
}

MODELS: dict[str, dict[str, Any]] = {
    "pelvis-demo": {
        "dataset_id": 901,
        "channels": ("t2",),
        "yaml": {
            "name": "pelvis-demo",
            "kind": "nnunet",
            "version": "1.0.0",
            "description": (
                "DEMONSTRATION MODEL trained only on synthetic pelvis MR phantoms "
                f"(gateway.demo.phantom, scripts/train_pelvis_demo.py). {_NOT_CLINICAL}"
            ),
            "nnunet": _NNUNET,
            "inputs": [_T2],
            "guardrails": _GUARDRAILS,
            "labels": _LABELS,
        },
    },
    "pelvis-dixon-demo": {
        "dataset_id": 902,
        "channels": ("t2", "water"),
        "yaml": {
            "name": "pelvis-dixon-demo",
            "kind": "nnunet",
            "version": "1.0.0",
            "description": (
                "DEMONSTRATION MODEL with two inputs (T2 + Dixon water resampled onto the T2 "
                "grid), trained only on synthetic pelvis MR phantom studies (gateway.demo.phantom."
                f"make_study, scripts/train_pelvis_demo.py). {_NOT_CLINICAL}"
            ),
            "nnunet": _NNUNET,
            "inputs": [_T2, _WATER],
            "guardrails": _GUARDRAILS,
            "labels": _LABELS,
            # `aircon validate` thresholds (median over the test cases), set on phantoms only.
            "qa": {"acceptance": {"*": {"dice_min": 0.85}}},
        },
    },
}


def dataset_name(dataset_id: int) -> str:
    return f"Dataset{dataset_id:03d}_PelvisPhantom"


def case_channels(seed: int, channels: tuple[str, ...]) -> tuple[list[sitk.Image], sitk.Image]:
    """The model inputs of one phantom case, all on the T2 grid, and the truth there."""
    if channels == ("t2",):
        ph = make_phantom(seed)
        return [ph.image], ph.labels
    study = make_study(seed)
    images = [study.t2.image]
    for name in channels[1:]:
        images.append(resample_to(study.dixon[name], study.t2.image))
    return images, study.t2.labels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    p.add_argument("--train-cases", type=int, default=20)
    p.add_argument("--eval-cases", type=int, default=5, help="held-out phantoms to evaluate")
    p.add_argument("--seed", type=int, default=0, help="training phantoms use seed*1000 + i")
    p.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate")
    p.add_argument("--model", choices=sorted(MODELS), default="pelvis-demo")
    p.add_argument("--out", type=Path, default=None, help="default: models/<model>")
    p.add_argument("--work", type=Path, default=None, help="keep nnU-Net folders here")
    args = p.parse_args(argv)
    if args.train_cases < 2 or args.epochs < 1 or args.iterations < 1:
        p.error("need at least 2 training cases, 1 epoch and 1 iteration")
    if args.seed < 0 or args.seed * 1000 + args.train_cases > HELD_OUT_SEED_BASE:
        p.error("training seeds would overlap the held-out seeds")
    if args.out is None:
        args.out = REPO / "models" / args.model
    return args


def training_seeds(seed: int, n: int) -> list[int]:
    return [seed * 1000 + i for i in range(n)]


def held_out_seeds(n: int) -> list[int]:
    return [HELD_OUT_SEED_BASE + i for i in range(n)]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# nnU-Net steps


def write_raw_dataset(raw_dir: Path, seeds: list[int], model: dict[str, Any]) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    images, labels = raw_dir / "imagesTr", raw_dir / "labelsTr"
    images.mkdir(parents=True)
    labels.mkdir()
    for s in seeds:
        channels, truth = case_channels(s, model["channels"])
        for c, image in enumerate(channels):
            sitk.WriteImage(image, str(images / f"phantom_{s:07d}_{c:04d}.nii.gz"))
        sitk.WriteImage(truth, str(labels / f"phantom_{s:07d}.nii.gz"))
    generate_dataset_json(
        str(raw_dir),
        channel_names={i: ch["name"] for i, ch in enumerate(model["yaml"]["inputs"])},
        labels={"background": 0, **{name: v for v, name in LABEL_NAMES.items()}},
        num_training_cases=len(seeds),
        file_ending=".nii.gz",
        dataset_name=raw_dir.name,
        description="Synthetic pelvis MR phantoms (gateway.demo.phantom). Not patient data.",
        license="Apache-2.0",
    )


def plan_and_preprocess(
    preprocessed: Path, image_shape: tuple[int, int, int], dataset_id: int
) -> None:
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    extract_fingerprint_dataset(
        dataset_id,
        DatasetFingerprintExtractor,
        num_processes=1,
        verbose=False,
        show_progress_bar=False,
    )
    plan_experiment_dataset(dataset_id, ExperimentPlanner)
    os.environ["nnUNet_n_proc_DA"] = "1"  # one augmentation worker: 2.5x faster than none
    plans_file = preprocessed / dataset_name(dataset_id) / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans_file.write_text(json.dumps(shrink_plans(plans, image_shape), indent=2))
    preprocess_dataset(
        dataset_id,
        configurations=(CONFIGURATION,),
        num_processes=(1,),
        verbose=False,
        show_progress_bar=False,
    )


def shrink_plans(plans: dict[str, Any], image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Keep only 3d_fullres, with a 4-stage PlainConvUNet small enough for CPUs."""
    cfg = plans["configurations"][CONFIGURATION]
    n = len(FEATURES)
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    divisor = np.prod(np.array(strides), axis=0)
    cfg["patch_size"] = [int(s // d * d) for s, d in zip(image_shape, divisor, strict=True)]
    cfg["batch_size"] = 2
    arch = cfg["architecture"]
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    arch["arch_kwargs"].update(
        n_stages=n,
        features_per_stage=list(FEATURES),
        kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * (n - 1),
        strides=strides,
        n_conv_per_stage=[2] * n,
        n_conv_per_stage_decoder=[2] * (n - 1),
    )
    plans["configurations"] = {CONFIGURATION: cfg}
    return plans


def make_trainer(preprocessed: Path, args: argparse.Namespace) -> Any:
    import torch
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class DemoTrainer(nnUNetTrainer):
        """nnUNetTrainer with AdamW: SGD did not learn the small organs in short CPU runs.

        The network is built exactly as by nnUNetTrainer, so the stripped checkpoint can name
        ``nnUNetTrainer`` and inference needs no custom class.
        """

        def configure_optimizers(self) -> tuple[Any, Any]:
            optimizer = torch.optim.AdamW(
                self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay
            )
            return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

        def get_dataloaders(self) -> tuple[Any, Any]:
            # nnU-Net seeds its augmentation workers from OS entropy; seed them for repeatability.
            loaders = super().get_dataloaders()
            for offset, loader in enumerate(loaders):
                if hasattr(loader, "seeds"):
                    loader.seeds = [args.seed + offset] * len(loader.seeds)
            return loaders

    folder = preprocessed / dataset_name(MODELS[args.model]["dataset_id"])
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((folder / "dataset.json").read_text())
    trainer = DemoTrainer(plans, CONFIGURATION, FOLD, dataset_json, device=torch.device("cpu"))
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = 2
    trainer.initial_lr = args.lr
    trainer.save_every = 10**6  # only the final checkpoint
    return trainer


def strip_checkpoint(src: Path, dst: Path) -> None:
    """Keep what nnUNetPredictor needs; weights in fp16, shared storages converted once."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    halves: dict[tuple[int, int, tuple[int, ...]], torch.Tensor] = {}
    weights = {}
    for name, t in ckpt["network_weights"].items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in halves:
            halves[key] = t.half() if t.is_floating_point() else t.clone()
        weights[name] = halves[key]
    init_args = dict(ckpt["init_args"])
    init_args["device"] = torch.device("cpu")
    out = {
        "network_weights": weights,
        "init_args": init_args,
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": ckpt["inference_allowed_mirroring_axes"],
        "current_epoch": ckpt.get("current_epoch"),
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dst)


def export_model(
    results_dir: Path, out: Path, provenance: dict[str, Any], model_yaml: dict[str, Any]
) -> None:
    """Write ``out/nnunet`` and ``out/model.yaml``, replacing an earlier export."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    nnunet_dir = staging / "nnunet"
    nnunet_dir.mkdir()
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy2(results_dir / name, nnunet_dir / name)
    strip_checkpoint(
        results_dir / f"fold_{FOLD}" / "checkpoint_final.pth",
        nnunet_dir / f"fold_{FOLD}" / "checkpoint_final.pth",
    )
    (staging / "model.yaml").write_text(
        "# Written by scripts/train_pelvis_demo.py. DEMONSTRATION MODEL, NOT FOR CLINICAL USE.\n"
        + yaml.safe_dump(model_yaml, sort_keys=False, width=100, default_flow_style=None)
    )
    (staging / "training.json").write_text(json.dumps(provenance, indent=2) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    for item in ("nnunet", "model.yaml", "training.json"):
        target = out / item
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        (staging / item).rename(target)
    shutil.rmtree(staging)


def evaluate(out: Path, seeds: list[int], channels: tuple[str, ...]) -> dict[str, list[float]]:
    """Dice per ROI name over held-out phantoms, through the gateway's own segmenter."""
    from gateway.config import SegmentationConfig
    from gateway.segment import NnUNetSegmenter
    from gateway.segment.registry import load_model

    spec = load_model(out)
    segmenter = NnUNetSegmenter(spec, SegmentationConfig(device="cpu", threads=2))
    segmenter.warm_up()
    scores: dict[str, list[float]] = {roi.name: [] for roi in spec.labels.values()}
    for s in seeds:
        images, truth = case_channels(s, channels)
        arrays = [sitk.GetArrayFromImage(i).astype(np.float32) for i in images]
        spacing = tuple(reversed(images[0].GetSpacing()))
        start = time.perf_counter()
        pred = segmenter.predict(arrays, spacing)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        dice = dice_scores(sitk.GetArrayFromImage(truth), pred, tuple(spec.labels))
        for label, value in dice.items():
            scores[spec.labels[label].name].append(value)
        logger.info(
            "held-out seed %d: %s (%.2f s)",
            s,
            ", ".join(f"{spec.labels[k].name} {v:.3f}" for k, v in dice.items()),
            seconds,
        )
    return scores


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    model = MODELS[args.model]
    work = args.work or Path(tempfile.mkdtemp(prefix=f"{args.model}-"))
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    for d in (raw, pre, res):
        d.mkdir(parents=True, exist_ok=True)
    # nnU-Net reads these when it runs; set before importing it, for this process only.
    os.environ.update(
        nnUNet_raw=str(raw),
        nnUNet_preprocessed=str(pre),
        nnUNet_results=str(res),
        nnUNet_n_proc_DA="1",
        nnUNet_def_n_proc="1",
        nnUNet_compile="false",
    )
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    seed_everything(args.seed)
    seeds = training_seeds(args.seed, args.train_cases)
    start = time.perf_counter()
    try:
        write_raw_dataset(raw / dataset_name(model["dataset_id"]), seeds, model)
        image_shape = make_phantom(seeds[0]).image.GetSize()[::-1]
        plan_and_preprocess(pre, image_shape, model["dataset_id"])
        prep_s = time.perf_counter() - start
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        seed_everything(args.seed)
        trainer = make_trainer(pre, args)
        trainer.run_training()
        train_s = time.perf_counter() - start - prep_s
        provenance = {
            "warning": "DEMONSTRATION MODEL trained on synthetic phantoms; not for clinical use",
            "training_seeds": seeds,
            "epochs": args.epochs,
            "iterations_per_epoch": args.iterations,
            "optimizer": f"AdamW lr={args.lr}",
            "features_per_stage": list(FEATURES),
            "preprocess_seconds": round(prep_s, 1),
            "train_seconds": round(train_s, 1),
            "nnunetv2": _version("nnunetv2"),
            "torch": torch.__version__,
        }
        export_model(Path(trainer.output_folder_base), args.out, provenance, model["yaml"])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    eval_seeds = held_out_seeds(args.eval_cases)
    scores = evaluate(args.out, eval_seeds, model["channels"])
    summary = {name: round(float(np.mean(v)), 4) for name, v in scores.items()}
    provenance["held_out_seeds"] = eval_seeds
    provenance["held_out_mean_dice"] = summary
    (args.out / "training.json").write_text(json.dumps(provenance, indent=2) + "\n")
    ckpt_kb = (args.out / "nnunet" / f"fold_{FOLD}" / "checkpoint_final.pth").stat().st_size / 1024
    print(
        f"trained in {train_s / 60:.1f} min (+{prep_s:.0f} s preprocessing); "
        f"checkpoint {ckpt_kb:.0f} KiB; model in {args.out}"
    )
    print("held-out mean Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
