"""A student that starts from the teacher: LiteMedSAM's own TinyViT at a reduced input resolution.

MiniSAM's encoder is learned from scratch on a few hundred slices and still underfits them. This experiment
asks how far the other road goes: keep LiteMedSAM's encoder weights, feed it a smaller image (MACs fall with
the square of the side), optionally drop its last stage, upsample its token grid to the 64×64 embedding the
decoder expects, and fine-tune it for a few minutes on the teacher's embeddings of MiniSAM's training slices.

    python experiments/minisam_teacher_init.py --steps 150       # 160-s3 and 160-s3-half, writes docs/minisam.md
    python experiments/minisam_teacher_init.py --variants 128 --steps 150 --no-write

Data: the slices `scripts/gather_unlabelled.py` cached and the COSMOS `adapt_train` images of
`conf/splits_val.json` (the PNG files of the shared `ultrasound_unlabelled` folder too, which holds none: its
two frames are TIFF; the cache's ultrasound is pydicom's). Scores: box Dice per object
against the ground truth on those `adapt_train` objects (*fit*) and on the `val` objects, each also as a ratio
to the teacher's; never `test`. Loss: MSE between the student's and the teacher's image embeddings (the
decoder stays LiteMedSAM's, frozen). MACs as `benchmarks/model_flops.py` counts them (torch's count / 2; this
encoder has no fused attention, so torch sees every op); footprint: the backend's `memory_footprint()`
(weights and buffers of encoder, prompt encoder and decoder, fp32), as in the speed table above.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import doc_sections  # noqa: E402 - the shared section writer

DATA = REPO.parent / "shared" / "data"
SPLITS = REPO / "src" / "minisam_train" / "conf" / "splits_val.json"
DOC = REPO / "docs" / "minisam.md"
START, END = "<!-- minisam-teacher-init:start -->", "<!-- minisam-teacher-init:end -->"
# name -> (input side, TinyViT stages kept, blocks kept of stage 3's six): 4 stages keep all, 3 drop the last
# (2 blocks, 2.5 M parameters); keeping every other block of stage 3 (LayerDrop's "every other") saves 0.9 M more.
VARIANTS = {"128": (128, 4, None), "160-s3": (160, 3, None), "160-s3-half": (160, 3, (0, 2, 4))}
DEFAULT_VARIANTS = ("160-s3", "160-s3-half")
OBJECT_SEEDS = 12  # random boxes per image from which teacher_objects keeps the consistent ones
def training_images() -> list[np.ndarray]:
    import imageio.v3 as iio

    from minisam_train.data.splits import read_splits, split_images
    from minisam_train.data.unlabelled_cache import default_cache_dir

    files = sorted(default_cache_dir().glob("*/*.png")) + sorted((DATA / "ultrasound_unlabelled").glob("*.png"))
    roots = {ds: parts["root"] for ds, parts in read_splits(SPLITS).items()}
    for ds, names in split_images(SPLITS, "adapt_train").items():
        files += [DATA / roots[ds] / "data" / "test_data" / ds / "images" / n for n in sorted(names)]
    if len(files) < 50:
        raise SystemExit(f"only {len(files)} training images: run scripts/gather_unlabelled.py first")
    images = [iio.imread(f) for f in files]
    return [im[..., :3] if im.ndim == 3 else im for im in images]


def labelled(key: str) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(image, object masks) for every image of one split key: COSMOS's objects (>= 50 px per class)."""
    from minisam_train.data.cosmos import CosmosDataset
    from minisam_train.data.splits import split_images

    data = CosmosDataset([DATA / "cosmos_sample", DATA / "cosmos_extra"], include=split_images(SPLITS, key))
    records = [data.read(entry) for entry in data.entries]
    return [(r.image, list(r.objects.values())) for r in records if r.objects]


def box_dice(backend, slices) -> float:
    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.masks import dice, tight_box

    predictor, scores = MiniSamPredictor(backend), []
    with torch.inference_mode():
        for image, objects in slices:
            predictor.set_image(image)
            scores += [dice(predictor.predict(box=tight_box(m), multimask=False)[0][0], m) for m in objects]
    return float(np.mean(scores))


def macs(encoder) -> float:
    """GMACs of one 256² forward, counted as benchmarks/model_flops.py counts every encoder."""
    import model_flops

    return model_flops.encoder_macs(encoder, torch.zeros(1, 3, 256, 256))["macs"] / 1e9


def seconds(encoder, rounds: int = 7) -> float:
    """Median seconds of one 256² forward, after one warm-up."""
    from series_io import median_s

    x = torch.zeros(1, 3, 256, 256)
    with torch.inference_mode():
        encoder(x)
        return median_s(lambda: encoder(x), rounds)


def random_boxes(input_hw, per_image: int, seed: int, smallest: float = 0.15) -> torch.Tensor:
    """``(N, per_image, 4)`` boxes (x0, y0, x1, y1) in the 256² frame, each inside its image's unpadded part,
    sides ``smallest``–60 % of it: prompts whose teacher masks the mask loss asks the student to reproduce."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(len(input_hw), per_image, 4)
    for i, (h, w) in enumerate(input_hw):
        size = torch.tensor([w, h]) * (smallest + (0.6 - smallest) * torch.rand(per_image, 2, generator=g))
        lo = (torch.tensor([w, h]) - size) * torch.rand(per_image, 2, generator=g)
        out[i] = torch.cat([lo, lo + size], 1)
    return out


def teacher_objects(teacher, embedding, hw, seeds: int, keep: int, seed: int) -> torch.Tensor:
    """``(k <= keep, 4)`` boxes around objects the teacher itself segments in one image: the largest component
    of its mask for each of ``seeds`` random boxes, kept when it is neither tiny nor most of the image and
    when the teacher, given that component's tight box, gives back nearly the same mask (IoU >= 0.75): a box a
    user would draw round something the teacher sees as one object. Labels are never read. A seed box that cuts
    a larger structure gives a crop of it that passes the check as well (the teacher gives the crop back for the
    crop's own box), so some of these boxes frame parts of organs rather than whole ones."""
    from scipy import ndimage

    from napari_qlora_minisam.masks import tight_box

    h, w = hw
    seeds_xyxy = random_boxes([hw], seeds, seed, smallest=0.08)[0]
    masks = (teacher.decode(embedding, boxes=seeds_xyxy, multimask=False)[0][:, 0] > 0).numpy()
    found, boxes = [], []
    for mask in masks:
        labels, n = ndimage.label(mask)
        if n == 0:
            continue
        part = labels == 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1))))
        if not 0.003 * h * w <= part.sum() <= 0.4 * h * w:
            continue
        if any((part & f).sum() / (part | f).sum() > 0.7 for f in found):
            continue  # one box per object
        box = torch.tensor(tight_box(part), dtype=torch.float32)
        again = teacher.decode(embedding, boxes=box[None], multimask=False)[0][0, 0].numpy() > 0
        if (part & again).sum() / (part | again).sum() >= 0.75:
            found.append(part)
            boxes.append(box)
        if len(boxes) == keep:
            break
    return torch.stack(boxes) if boxes else torch.empty(0, 4)


def run(names, steps: int, lr: float, batch: int, seed: int, save: Path | None = None, views=(),
        init: Path | None = None, mask_weight: float = 0.0, temperature: float = 2.0,
        boxes_per_image: int = 2, mask_prompts: str = "random", window: int | None = None,
        mlp_hidden: int | None = None) -> tuple[list[dict], dict]:
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.models.litemedsam import LITEMEDSAM_SPEC
    from minisam_train.data.unlabelled import apply_view
    from napari_qlora_minisam.models.minisam_student import MiniSamEncoder, load_encoder, save_encoder
    from napari_qlora_minisam.transforms import prepare_image

    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    teacher = load_model("litemedsam", device="cpu")
    fit, val = labelled("adapt_train"), labelled("val")
    ref = {"fit": box_dice(teacher, fit), "val": box_dice(teacher, val), "objects": (
        sum(len(o) for _, o in fit), sum(len(o) for _, o in val)),
           "macs": macs(teacher.net.image_encoder), "bytes": teacher.memory_footprint(),
           "seconds": seconds(teacher.net.image_encoder)}
    images = training_images()
    images += [apply_view(im, v) for v in views for im in images]  # fixed augmented copies, each with its target
    t0 = time.time()
    with torch.inference_mode():
        prepared = [prepare_image(im, LITEMEDSAM_SPEC) for im in images]
        pixels = torch.cat([p[0] for p in prepared])
        targets = torch.cat([teacher.encode(pixels[i:i + 1]) for i in range(len(pixels))])
        boxes = masks = None
        if mask_weight:  # per image: box prompts and the teacher's low-res mask logits, the mask loss's targets
            if mask_prompts == "objects":
                boxes = [teacher_objects(teacher, targets[i:i + 1], p[2], OBJECT_SEEDS, boxes_per_image, seed + i)
                         for i, p in enumerate(prepared)]
            else:
                boxes = list(random_boxes([p[2] for p in prepared], boxes_per_image, seed))
            masks = [teacher.decode(targets[i:i + 1], boxes=b, multimask=False)[0][:, 0].half() if len(b) else None
                     for i, b in enumerate(boxes)]
            ref["mask_prompts"] = sum(len(b) for b in boxes)
    ref.update(images=len(images), teacher_s=time.time() - t0)
    print(f"teacher: fit {ref['fit']:.3f} val {ref['val']:.3f}, {len(images)} images in {ref['teacher_s']:.0f} s",
          flush=True)
    rows = []
    for name in names:
        side, stages, blocks = VARIANTS[name]
        torch.manual_seed(seed)
        student = load_model("litemedsam", device="cpu")
        student.fast_paths = False  # the exported graph and hand-written path are LiteMedSAM's 256² encoder
        if init is not None:  # continue from a saved encoder of this variant's shape
            encoder = load_encoder(init)
            side, stages, blocks = encoder.side, encoder.stages, encoder.blocks
            if window is not None:
                encoder = encoder.with_window(window)
        else:
            encoder = MiniSamEncoder.from_teacher(student.net.image_encoder, side, stages, blocks,
                                                  **({} if window is None else {"window": window}))
        if mlp_hidden is not None:  # stage 3's MLPs cut to their most important units, biases not cached
            encoder = encoder.with_mlp_hidden(mlp_hidden)
        student.net.image_encoder = encoder.eval()  # eval, as the teacher's (TinyViT's bias cache, unless cut)
        row = {"variant": name, "side": side, "stages": stages, "stage3_blocks": 6 if blocks is None else len(blocks),
               "macs": macs(encoder),
               "bytes": student.memory_footprint(), "seconds": seconds(encoder), "steps": steps}
        row["fit_0"], row["val_0"] = box_dice(student, fit), box_dice(student, val)
        for module in (student.net.prompt_encoder, student.net.mask_decoder):
            module.requires_grad_(False)  # frozen: the mask loss trains the encoder through them
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.0)
        g, t = torch.Generator().manual_seed(seed), time.time()
        for step in range(1, steps + 1):
            encoder.train()
            pick = torch.randint(0, len(pixels), (batch,), generator=g)
            emb = encoder(pixels[pick])
            feature = F.mse_loss(emb, targets[pick])
            loss = feature
            with_masks = [(b, i) for b, i in enumerate(pick.tolist()) if mask_weight and masks[i] is not None]
            if with_masks:  # KL between softened masks, as minisam-train distill's mask term
                kl = 0.0
                for b, i in with_masks:
                    k = int(torch.randint(0, len(boxes[i]), (1,), generator=g))
                    kl = kl + F.binary_cross_entropy_with_logits(
                        student.decode(emb[b:b + 1], boxes=boxes[i][k][None], multimask=False)[0][:, 0] / temperature,
                        torch.sigmoid(masks[i][k][None].float() / temperature))
                loss = feature + mask_weight * kl / len(with_masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 50 == 0:
                print(f"{name} step {step} loss {loss.item():.4f} feature {feature.item():.4f} "
                      f"({time.time() - t:.0f} s)", flush=True)
        encoder.eval()
        row["train_s"] = time.time() - t
        row["fit"], row["val"] = box_dice(student, fit), box_dice(student, val)
        if save is not None:  # the shipped format: pretrained_models/minisam holds one of these folders
            save_encoder(encoder, save / name)
            recipe = "embedding MSE" + (f" + {mask_weight:g} x mask KL (T={temperature:g}, up to {boxes_per_image} "
                                        f"boxes per image: {mask_prompts}, {ref['mask_prompts']} in all)"
                                        if mask_weight else "")
            (save / name / "training.json").write_text(json.dumps({
                "variant": name, "steps": steps, "lr": lr, "batch": batch, "seed": seed, "loss": recipe,
                "stage3_window": encoder.window, "stage3_mlp_hidden": encoder.mlp_hidden,
                "images": ref["images"], "views": list(views), "init": None if init is None else str(init),
                "train_seconds": row["train_s"],
                "teacher_pass_seconds": ref["teacher_s"]}, indent=1) + "\n")
        rows.append(row)
        print(row, flush=True)
    return rows, ref


def report(rows, ref, steps, lr, batch) -> str:
    lines = ["| encoder | input | stages (stage-3 blocks) | GMACs | footprint | encoder s (eager) "
             "| fit box Dice: start → trained | val box Dice: start → trained | fit ratio | val ratio |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| LiteMedSAM (teacher) | 256² | 4 (6) | {ref['macs']:.1f} | {ref['bytes'] / 2**20:.1f} MiB (1.00) | "
             f"{ref['seconds']:.3f} | {ref['fit']:.3f} | {ref['val']:.3f} | 1.000 | 1.000 |"]
    for r in rows:
        lines.append(f"| `{r['variant']}` | {r['side']}² | {r['stages']} ({r['stage3_blocks']}) | {r['macs']:.1f} | "
                     f"{r['bytes'] / 2**20:.1f} MiB ({r['bytes'] / ref['bytes']:.2f}) | {r['seconds']:.3f} | "
                     f"{r['fit_0']:.3f} → **{r['fit']:.3f}** | {r['val_0']:.3f} → **{r['val']:.3f}** | "
                     f"{r['fit'] / ref['fit']:.3f} | {r['val'] / ref['val']:.3f} |")
    train = ", ".join(f"`{r['variant']}` {r['train_s']:.0f} s" for r in rows)
    return (f"Command: `python experiments/minisam_teacher_init.py --steps {steps}`. Fine-tuning: {steps} steps, "
            f"batch {batch}, AdamW lr {lr:g}, embedding MSE, on {ref['images']} images (teacher pass "
            f"{ref['teacher_s']:.0f} s; training {train}; 2-core CPU). Box Dice per object: *fit* = the "
            f"{ref['objects'][0]} `adapt_train` objects (trained on, without labels), *val* = the "
            f"{ref['objects'][1]} `val` objects (never seen). Encoder seconds: PyTorch eager, median of 7, one "
            f"256² slice.\n\n" + "\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--save", type=Path, default=None, help="folder for each variant's trained encoder (MiniSAM's shipped format)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", nargs="*", default=[], help="augmented copies of every image (minisam_train's "
                    "data.views names: hflip, vflip, rot90, gamma0.7...), each embedded by the teacher")
    ap.add_argument("--init", type=Path, default=None, help="continue from this saved encoder (one variant)")
    ap.add_argument("--mask-weight", type=float, default=0.0, help="weight of a mask KL term (teacher's masks of "
                    "random boxes, decoded by the frozen decoder); 0: embedding MSE only")
    ap.add_argument("--mask-prompts", choices=["random", "objects"], default="random", help="the mask term's "
                    "boxes: random, or round objects the teacher segments consistently (teacher_objects)")
    ap.add_argument("--boxes-per-image", type=int, default=2)
    ap.add_argument("--window", type=int, default=None, help="stage 3's attention window (TinyViT's: 14)")
    ap.add_argument("--mlp-hidden", type=int, default=None, help="cut stage 3's MLPs to this many hidden units "
                    "(TinyViT's: 640) and gather attention biases per call instead of caching them")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    rows, ref = run(args.variants, args.steps, args.lr, args.batch, args.seed, args.save, args.views, args.init,
                    args.mask_weight, boxes_per_image=args.boxes_per_image, mask_prompts=args.mask_prompts,
                    window=args.window, mlp_hidden=args.mlp_hidden)
    text = report(rows, ref, args.steps, args.lr, args.batch)
    print(text)
    if not args.no_write:
        doc_sections.write_section(DOC, text, START, END, title="# MiniSAM")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
