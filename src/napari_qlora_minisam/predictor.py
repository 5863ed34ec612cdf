"""``MiniSamPredictor``: set an image once, then prompt it many times (segment-anything's predictor API)."""

from __future__ import annotations

import threading

import numpy as np
import torch

from .embedding_cache import CachedEmbedding, EmbeddingCache, image_digest
from .embedding_store import EmbeddingStore, store_key
from .errors import InputError
from .intensity import check_policy
from .transforms import mask_to_logits, postprocess_logits, prepare_image, scale_boxes, scale_coords, validate_image

# ``box_window``: the mask is computed on the box's grid cells plus this much of the box's longer side on
# every side, and never fewer than WINDOW_MIN_CELLS cells (32 px of LiteMedSAM's 256² input).
WINDOW_MARGIN = 0.5
WINDOW_MIN_CELLS = 8


def box_window(box_net: np.ndarray, cell: float, margin: float = WINDOW_MARGIN,
               min_cells: int = WINDOW_MIN_CELLS, points_net: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """Grid cells ``(r0, r1, c0, c1)`` around a box ``(x0, y0, x1, y1)`` given in network pixels.

    Clicks given with the box (``points_net``, ``(N, 2)`` x, y) are taken in too: a click outside the box
    can add mask around itself, which must not fall outside the window.
    """
    x0, y0, x1, y1 = (float(v) for v in box_net)
    if points_net is not None and len(points_net):
        pts = np.asarray(points_net, dtype=np.float64).reshape(-1, 2)
        x0, y0 = min(x0, pts[:, 0].min()), min(y0, pts[:, 1].min())
        x1, y1 = max(x1, pts[:, 0].max()), max(y1, pts[:, 1].max())
    x0, y0, x1, y1 = x0 / cell, y0 / cell, x1 / cell, y1 / cell
    m = max(float(min_cells), margin * max(x1 - x0, y1 - y0))
    return (int(np.floor(y0 - m)), int(np.ceil(y1 + m)), int(np.floor(x0 - m)), int(np.ceil(x1 + m)))


def click_window(points_net: np.ndarray, cell: float) -> tuple[int, int, int, int]:
    """:func:`box_window` for clicks without a box: around the clicks' extent, at least WINDOW_MIN_CELLS each way."""
    pts = np.asarray(points_net, dtype=np.float64).reshape(-1, 2)
    return box_window(np.concatenate([pts.min(0), pts.max(0)]), cell)


class MiniSamPredictor:
    """Stateful predictor over any backend returned by :func:`load_model`.

    Example:
        >>> model = load_model("litemedsam")
        >>> predictor = MiniSamPredictor(model)
        >>> predictor.set_image(ct_slice, intensity="ct_soft_tissue")
        >>> masks, scores, logits = predictor.predict(box=[40, 60, 120, 150], multimask=False)
    """

    def __init__(self, model, intensity: str = "minmax", cache: EmbeddingCache | None = None,
                 store: EmbeddingStore | None = None):
        self.model = model
        self.intensity = intensity
        self.cache = cache if cache is not None else EmbeddingCache()
        self.store = store  # embeddings on disk: looked up after the memory cache, written after computing
        self._current: CachedEmbedding | None = None
        self._lock = threading.RLock()  # the widget embeds and decodes from worker threads

    # -- image --------------------------------------------------------------------------------------
    def embedding_key(self, image: np.ndarray, intensity: str | None = None) -> tuple:
        """The memory cache's key (``set_image`` builds the same one)."""
        policy = intensity or self.intensity
        return (image_digest(image), self.model.cache_key, policy, self.model.spec)

    def set_image(self, image, intensity: str | None = None) -> CachedEmbedding:
        """Embed ``image`` (2D grey or RGB, any dtype) or take its embedding from the cache, then the store."""
        policy = check_policy(intensity or self.intensity)
        arr = validate_image(image)
        digest = image_digest(arr)
        key = (digest, self.model.cache_key, policy, self.model.spec)
        with self._lock:
            item = self.cache.get(key)
            if item is None and self.store is not None:
                item = self.store.get(store_key(digest, self.model, policy))
                if item is not None:
                    item = CachedEmbedding(item.embedding.to(self.model.device), item.original_hw, item.input_hw)
                    self.cache.put(key, item)
            if item is None:
                item = self._compute(arr, policy)
                self.cache.put(key, item)
                if self.store is not None:
                    self.store.put(store_key(digest, self.model, policy), item)
            if item is not self._current:  # a new image (or model): its decoder state, before the first prompt
                with torch.inference_mode():
                    self.model.prepare_decoder(item.embedding)
            self._current = item
        return item

    def _compute(self, arr: np.ndarray, policy: str) -> CachedEmbedding:
        pixels, original_hw, input_hw = prepare_image(arr, self.model.spec, policy)
        with torch.inference_mode():
            emb = self.model.encode(pixels.to(self.model.device))
        return CachedEmbedding(emb.float(), original_hw, input_hw)

    def in_store(self, image, intensity: str | None = None) -> bool:
        """Whether the store holds a file for ``image`` under this model and policy."""
        if self.store is None:
            return False
        policy = check_policy(intensity or self.intensity)
        return store_key(image_digest(validate_image(image)), self.model, policy) in self.store

    def store_embedding(self, image, intensity: str | None = None) -> bool:
        """Make sure the store holds ``image``'s embedding, without changing the image set; True if computed.

        Used by :func:`embedding_store.precompute`. Taken from the memory cache when it is there.
        """
        if self.store is None:
            raise ValueError("This predictor has no store; pass store=EmbeddingStore(...).")
        policy = check_policy(intensity or self.intensity)
        arr = validate_image(image)
        digest = image_digest(arr)
        skey = store_key(digest, self.model, policy)
        if skey in self.store:
            return False
        with self._lock:
            item = self.cache.get((digest, self.model.cache_key, policy, self.model.spec))
            computed = item is None
            if computed:
                item = self._compute(arr, policy)
            self.store.put(skey, item)
        return computed

    def reset_image(self) -> None:
        self._current = None

    @property
    def is_image_set(self) -> bool:
        return self._current is not None

    @property
    def original_size(self) -> tuple:
        self._require_image()
        return self._current.original_hw

    def _require_image(self):
        if self._current is None:
            raise InputError("No image is set; call set_image(image) before predict().")

    # -- prompts ------------------------------------------------------------------------------------
    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask: bool = True,
                box_window: bool = False):
        """Segment one object.

        Args:
            points: ``(N, 2)`` (x, y) in original pixels.
            point_labels: ``(N,)`` 1 = positive, 0 = negative.
            box: ``(4,)`` x0, y0, x1, y1 in original pixels.
            mask_input: low-res logits ``(256, 256)`` / ``(1, 256, 256)`` from an earlier call.
            multimask: three candidates if True (ambiguous prompts), else one.
            box_window: compute the mask only around the box and its clicks, or around the clicks when there
                is no box (:func:`box_window`), where backends support it: the same mask wherever it stays
                inside that window (the whole image is done when it reaches the window's edge); only mask
                wholly outside the window, away from the prompts, is left out. About a quarter less decoder
                time for a box preview.

        Returns:
            masks ``(M, H, W)`` bool, scores ``(M,)`` predicted IoU, low-res logits ``(M, 256, 256)``.
        """
        pts = lbl = bx = None
        if points is not None or point_labels is not None:
            pts, lbl = self._check_points(points, point_labels)
            pts, lbl = pts[None], lbl[None]
        if box is not None:
            bx = self._check_boxes(np.asarray(box, dtype=np.float32).reshape(-1, 4))
            if bx.shape[0] != 1:
                raise InputError(f"predict() takes one box, got {bx.shape[0]}; use predict_batch for several.")
        masks, scores, logits = self._run(pts, lbl, bx, mask_input, multimask, box_window)
        return masks[0], scores[0], logits[0]

    def mask_prompt(self, mask: np.ndarray) -> np.ndarray:
        """A binary ``(H, W)`` mask of the image set -> ``mask_input`` logits for :meth:`predict`."""
        self._require_image()
        mask = np.asarray(mask, bool)
        if mask.shape != tuple(self._current.original_hw):
            raise InputError(f"Mask of shape {mask.shape} does not fit the {self._current.original_hw} image.")
        low = tuple(4 * s for s in self._current.embedding.shape[-2:])
        return mask_to_logits(mask, self.model.spec.image_size, low)

    def predict_batch(self, boxes=None, points=None, point_labels=None, multimask: bool = False):
        """Segment ``B`` objects in one decoder call: ``boxes (B, 4)`` and/or ``points (B, N, 2)``.

        Returns masks ``(B, M, H, W)``, scores ``(B, M)``, logits ``(B, M, 256, 256)``.
        """
        pts = lbl = bx = None
        if boxes is not None:
            bx = self._check_boxes(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        if points is not None:
            p = np.asarray(points, dtype=np.float32)
            if p.ndim != 3:
                raise InputError(f"predict_batch points must be (B, N, 2), got shape {p.shape}.")
            checked = [self._check_points(p[i], np.asarray(point_labels)[i]) for i in range(p.shape[0])]
            pts = np.stack([c[0] for c in checked])
            lbl = np.stack([c[1] for c in checked])
        if bx is not None and pts is not None and bx.shape[0] != pts.shape[0]:
            raise InputError(f"{bx.shape[0]} boxes but {pts.shape[0]} point sets; give one of each per object.")
        return self._run(pts, lbl, bx, None, multimask)

    def segment_everything(self, image=None, **kwargs) -> list[dict]:
        """Every object of ``image`` (or of the image set): see :func:`.everything.segment_everything`."""
        from .everything import segment_everything

        return segment_everything(self, image, **kwargs)

    def _check_points(self, points, labels):
        self._require_image()
        if points is None or labels is None:
            raise InputError("Points need labels (1 = positive, 0 = negative) and labels need points.")
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) if np.size(points) else np.zeros((0, 2))
        lbl = np.asarray(labels).reshape(-1)
        if len(pts) != len(lbl):
            raise InputError(f"{len(pts)} points but {len(lbl)} labels; give one label per point.")
        if len(pts) == 0:
            raise InputError("Empty point prompt; add at least one point or use a box.")
        if not np.isfinite(pts).all():
            raise InputError("Point coordinates contain NaN or infinity.")
        if not np.isin(lbl, (0, 1)).all():
            raise InputError(f"Point labels must be 1 (positive) or 0 (negative); got {sorted(set(lbl.tolist()))}.")
        h, w = self._current.original_hw
        outside = (pts[:, 0] < 0) | (pts[:, 0] > w - 1) | (pts[:, 1] < 0) | (pts[:, 1] > h - 1)
        if outside.any():
            x, y = pts[np.argmax(outside)]
            raise InputError(f"Point (x={x:g}, y={y:g}) lies outside the {w}x{h} image (x in 0..{w - 1}, "
                             f"y in 0..{h - 1}).")
        return pts.astype(np.float32), lbl.astype(np.int64)

    def _check_boxes(self, boxes):
        self._require_image()
        if not np.isfinite(boxes).all():
            raise InputError("Box coordinates contain NaN or infinity.")
        bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bad.any():
            b = boxes[np.argmax(bad)]
            raise InputError(f"Box {b.tolist()} has x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1).")
        h, w = self._current.original_hw
        # Boxes drawn a little past the border are clipped, not refused: users drag loosely.
        out = boxes.copy()
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w - 1)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h - 1)
        if ((boxes[:, 2] < 0) | (boxes[:, 0] > w - 1) | (boxes[:, 3] < 0) | (boxes[:, 1] > h - 1)).any():
            raise InputError(f"Box {boxes[0].tolist()} lies entirely outside the {w}x{h} image.")
        return out

    def _run(self, pts, lbl, bx, mask_input, multimask, windowed: bool = False):
        self._require_image()
        if pts is None and bx is None and mask_input is None:
            raise InputError("No prompt given: pass points with labels, a box, or both.")
        item = self._current
        size = self.model.spec.image_size
        dev = self.model.device
        t_pts = t_lbl = t_box = t_mask = None
        if pts is not None:
            t_pts = torch.from_numpy(scale_coords(pts, item.original_hw, size)).to(dev)
            t_lbl = torch.from_numpy(lbl).to(dev)
        if bx is not None:
            t_box = torch.from_numpy(scale_boxes(bx, item.original_hw, size)).to(dev)
        if mask_input is not None:
            m = np.asarray(mask_input, dtype=np.float32)
            low = tuple(4 * s for s in item.embedding.shape[-2:])  # SAM's mask input is 4x the grid
            if m.shape[-2:] != low:
                raise InputError(f"mask_input must be low-res logits of shape (1, {low[0]}, {low[1]}) as "
                                 f"returned by predict(); got {m.shape}.")
            t_mask = torch.from_numpy(m.reshape(-1, 1, *low)).to(dev)
            n = (t_pts if t_pts is not None else t_box).shape[0] if (t_pts is not None or t_box is not None) else 1
            t_mask = t_mask.expand(n, -1, -1, -1)
        if multimask and bx is None and not self.model.point_multimask:
            multimask = False  # the active adapter answers clicks with one mask (see SamBackend.point_multimask)
        window = None
        cell = size / item.embedding.shape[-1]
        if windowed and t_box is not None and t_box.shape[0] == 1:
            window = box_window(t_box[0].cpu().numpy(), cell,
                                points_net=None if t_pts is None else t_pts[0].cpu().numpy())
        elif windowed and t_pts is not None and t_pts.shape[0] == 1:
            window = click_window(t_pts[0].cpu().numpy(), cell)
        with self._lock, torch.inference_mode():
            logits, iou = self.model.decode(item.embedding, t_pts, t_lbl, t_box, t_mask, multimask,
                                            window=window)
            full = postprocess_logits(logits, item.input_hw, item.original_hw, size)
        masks = (full > 0).cpu().numpy()
        return masks, iou.float().cpu().numpy(), logits.float().cpu().numpy()
