"""Re-propagation from a corrected slice (one direction, one undo step), settable stop rules, the
neighbour prompts beyond the box (mask_input, interior click) and the opt-in trim of written masks to the object's
intensities. A box-filling mock engine stands in for the model: these test the propagation logic and the label
writes, not the model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from napari.layers import Labels

from napari_qlora_minisam.annotation import AnnotationSession
from napari_qlora_minisam.errors import InputError
from napari_qlora_minisam.transforms import mask_to_logits, postprocess_logits
from napari_qlora_minisam.volume import (DEFAULT_NEIGHBOUR_PROMPT, StopRules, default_neighbour_prompt, interior_point,
                                         propagate, run_propagation)


class BoxEngine:
    """Segments each slice as the box it is given less ``shrink`` px a side (3: the margin a 10 px object's box
    gets, so objects keep their size; less: they grow slice by slice)."""

    def __init__(self, shrink: int = 3):
        self.shrink = shrink

    def segment_box(self, plane, intensity, box, **neighbour):
        mask = np.zeros(plane.shape, bool)
        x0, y0, x1, y1 = np.round(box).astype(int)
        k = self.shrink
        mask[max(0, y0 + k):y1 + 1 - k, max(0, x0 + k):x1 + 1 - k] = True
        return mask, 1.0


def volume_session(engine=None):
    image = np.random.default_rng(0).random((9, 40, 40)).astype(np.float32)
    s = AnnotationSession(image, name="vol")
    s.engine = engine or BoxEngine()
    s.labels = Labels(np.zeros(s.shape, np.int32))
    return s


def fill(session, z, label_id, r0, r1, c0, c1):
    session.labels.data[z, r0:r1, c0:c1] = label_id


@pytest.mark.parametrize("direction, replaced, kept", [(1, range(5, 9), range(0, 4)), (-1, range(0, 4), range(5, 9))])
def test_repropagation_replaces_only_the_object_beyond_the_slice_in_one_undo_step(direction, replaced, kept):
    s = volume_session()
    for z in range(9):
        fill(s, z, 1, 5, 15, 5, 15)  # object 1 everywhere: the old propagation
    fill(s, 4, 1, 20, 30, 20, 30)  # slice 4 was corrected: the object moved
    s.labels.data[4, 5:15, 5:15] = 0
    fill(s, 6, 2, 30, 36, 30, 36)  # another object beyond, away from the new masks
    fill(s, 2, 2, 30, 36, 30, 36)  # and one on the other side
    fill(s, 6, 3, 26, 28, 26, 28)  # an object inside where the new mask will go: not overwritten by default
    before = np.array(s.labels.data, copy=True)
    assert s.set_slice(4)
    label_id, start = s.propagation_seed(1)
    steps, result = run_propagation(s.propagate(start, directions=(direction,)))
    assert sorted(st.z for st in steps) == sorted(replaced)
    assert direction in result.stopped and -direction not in result.stopped
    changed = s.commit_repropagation(label_id, 4, direction, steps)
    after = np.asarray(s.labels.data)
    assert changed > 0
    for z in replaced:  # the old object is gone there, the new one is where the corrected slice is
        assert not (after[z, 5:15, 5:15] == 1).any()
        assert (after[z, 21:29, 21:29] == 1).sum() >= 60
    for z in kept:  # the other side and the corrected slice itself: untouched
        np.testing.assert_array_equal(after[z], before[z])
    np.testing.assert_array_equal(after[4], before[4])
    np.testing.assert_array_equal(after == 2, before == 2)  # other objects keep every pixel
    np.testing.assert_array_equal(after == 3, before == 3)
    s.labels.undo()  # the whole re-propagation in one step
    np.testing.assert_array_equal(s.labels.data, before)
    s.labels.redo()
    np.testing.assert_array_equal(s.labels.data, after)


def test_repropagation_removes_the_object_where_the_new_run_stops_earlier():
    s = volume_session()
    for z in range(9):
        fill(s, z, 1, 5, 15, 5, 15)
    before = np.array(s.labels.data, copy=True)
    s.set_slice(4)
    label_id, start = s.propagation_seed(1)
    steps, _ = run_propagation(s.propagate(start, max_slices=2, directions=(1,)))
    assert sorted(st.z for st in steps) == [5, 6]
    s.commit_repropagation(label_id, 4, 1, steps)
    after = np.asarray(s.labels.data)
    assert all((after[z] == 1).any() for z in (5, 6)) and not (after[7:] == 1).any()
    np.testing.assert_array_equal(after[:5], before[:5])
    s.labels.undo()
    np.testing.assert_array_equal(s.labels.data, before)


def test_repropagation_refuses_slices_on_the_wrong_side_and_bad_directions():
    s = volume_session()
    fill(s, 4, 1, 5, 15, 5, 15)
    s.set_slice(4)
    _, start = s.propagation_seed(1)
    steps, _ = run_propagation(s.propagate(start, directions=(-1,)))
    with pytest.raises(InputError, match="not beyond slice 4"):
        s.commit_repropagation(1, 4, 1, steps)
    with pytest.raises(InputError, match="Direction"):
        s.beyond(4, 0)
    with pytest.raises(InputError, match="Directions"):
        next(s.propagate(start, directions=(2,)))


def test_settable_stop_rules_change_where_propagation_stops():
    s = volume_session(BoxEngine(shrink=1))  # each slice's mask grows by 2 px a side: 10x10 -> 14x14 -> ...
    fill(s, 4, 1, 5, 15, 5, 15)
    s.set_slice(4)
    _, start = s.propagation_seed(1)
    default, result = run_propagation(s.propagate(start, directions=(1,)))
    tight, tight_result = run_propagation(s.propagate(start, directions=(1,), rules=StopRules(max_growth=1.5)))
    assert len(default) > len(tight)  # the default 2.5x allows the growth, 1.5x stops it early
    assert "leaked" in tight_result.stopped[1]
    vanish, vanish_result = run_propagation(s.propagate(start, directions=(1,), rules=StopRules(min_area=10_000)))
    assert vanish == [] and "vanished" in vanish_result.stopped[1]
    assert StopRules() == StopRules(min_area=20, collapse_ratio=0.25, max_growth=2.5, min_score=0.0,
                                    min_intensity_match=0.2, min_start_fraction=0.0)  # the defaults


def test_the_fade_rule_stops_where_the_object_tapers_below_a_fraction_of_the_committed_slice():
    vol = np.zeros((9, 40, 40), bool)
    sizes = {4: 20, 5: 14, 6: 10, 7: 6, 8: 4}  # a tapering object, each slice 0.5-0.7x its neighbour
    for z, n in sizes.items():
        vol[z, 10:10 + n, 10:10 + n] = True

    def segment(z, box, **_):
        return vol[z], 1.0

    steps, _ = run_propagation(propagate(segment, 4, vol[4], 9, directions=(1,), rules=StopRules(min_area=1)))
    assert [s.z for s in steps] == [5, 6, 7, 8]  # the default rules follow it to the end
    steps, result = run_propagation(propagate(segment, 4, vol[4], 9, directions=(1,),
                                              rules=StopRules(min_area=1, min_start_fraction=0.2)))
    assert [s.z for s in steps] == [5, 6] and "faded out" in result.stopped[1] and "slice 7" in result.stopped[1]


def test_neighbour_prompts_reach_the_segmenter():
    vol = np.zeros((5, 30, 30), bool)
    vol[:, 8:20, 10:22] = True
    calls = []

    def segment(z, box, **neighbour):
        calls.append(neighbour)
        return vol[z], 1.0

    run_propagation(propagate(segment, 2, vol[2], 5))
    assert calls and all(c == {} for c in calls)  # the generic box prompt: called as segment(z, box)
    calls.clear()
    run_propagation(propagate(segment, 2, vol[2], 5, prompt="box+mask+point"))
    assert len(calls) == 4
    for c in calls:
        np.testing.assert_array_equal(c["mask"], vol[2])
        x, y = c["points"][0]
        assert vol[2][int(y), int(x)] and c["point_labels"].tolist() == [1]
    calls.clear()
    boxes = []
    run_propagation(propagate(lambda z, box, **kw: (boxes.append(box), segment(z, box, **kw))[1], 2, vol[2], 5,
                              prompt="point"))
    assert boxes and all(b is None for b in boxes)  # the click alone, no box
    assert all(sorted(c) == ["point_labels", "points"] for c in calls)
    with pytest.raises(InputError, match="neighbour prompt"):
        next(propagate(segment, 2, vol[2], 5, prompt="lasso"))


class RecordingEngine(BoxEngine):
    """A box engine on a stated base (``source``, active adapter) that records the neighbour prompts it gets."""

    def __init__(self, source: str, adapter: str | None):
        super().__init__()
        self.backend = SimpleNamespace(source=source, active_adapter=adapter)
        self.prompts, self.boxed = [], []

    def segment_box(self, plane, intensity, box, **neighbour):
        self.prompts.append(sorted(neighbour))
        self.boxed.append(box is not None)
        if box is None:  # a click alone: the box engine fills a box round it
            x, y = neighbour["points"][0]
            box = np.array([x - 5, y - 5, x + 5, y + 5])
        return super().segment_box(plane, intensity, box)


@pytest.mark.parametrize("source, adapter, expected", [
    ("litemedsam", None, DEFAULT_NEIGHBOUR_PROMPT), ("litemedsam", "ct", DEFAULT_NEIGHBOUR_PROMPT),
    ("minisam", None, DEFAULT_NEIGHBOUR_PROMPT), ("minisam", "minisam-ct", "box")])
def test_the_session_prompts_each_slice_as_its_model_propagates_best(source, adapter, expected):
    engine = RecordingEngine(source, adapter)
    assert default_neighbour_prompt(engine.backend) == expected
    s = volume_session(engine)
    fill(s, 4, 1, 10, 20, 10, 20)
    assert s.set_slice(4)
    run_propagation(s.propagate(s.propagation_seed(1)[1], max_slices=1))
    want = sorted(key for part, keys in (("mask", ["mask"]), ("point", ["points", "point_labels"]))
                  if part in expected.split("+") for key in keys)
    assert engine.prompts == [want, want]  # one slice each way
    assert engine.boxed == [expected != "point"] * 2  # the click alone sends no box
    engine.prompts.clear()
    engine.boxed.clear()
    run_propagation(s.propagate(s.propagation_seed(1)[1], max_slices=1, prompt="box"))  # a stated prompt wins
    assert engine.prompts == [[], []] and engine.boxed == [True, True]
    assert default_neighbour_prompt(None) == DEFAULT_NEIGHBOUR_PROMPT


def test_interior_point_lies_inside_a_ring():
    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[10:30, 10:30] = False  # centroid at the hole
    x, y = interior_point(ring)
    assert ring[int(y), int(x)]


def test_mask_to_logits_maps_back_to_the_mask():
    import torch

    mask = np.zeros((120, 200), bool)
    mask[30:80, 50:150] = True
    logits = mask_to_logits(mask, 256, (256, 256))
    assert logits.shape == (1, 256, 256)
    back = postprocess_logits(torch.from_numpy(logits), (154, 256), mask.shape, 256)[0].numpy() > 0
    assert (back == mask).mean() > 0.99


def test_predictor_takes_the_neighbour_mask_as_mask_input(tiny_hf):
    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.volume import SliceSegmenter

    stack = np.random.default_rng(1).random((3, 48, 64)).astype(np.float32)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:40] = True
    seg = SliceSegmenter(MiniSamPredictor(tiny_hf), stack)
    out, score = seg(1, np.array([18, 8, 42, 32], np.float32), mask=mask, points=np.array([[30.0, 20.0]]),
                     point_labels=np.array([1]))
    assert out.shape == (48, 64) and np.isfinite(score)
    with pytest.raises(InputError, match="does not fit"):
        seg(1, np.array([18, 8, 42, 32], np.float32), mask=mask[:10])


def test_a_cancelled_repropagation_replaces_only_the_slices_it_reached():
    s = volume_session()
    for z in range(9):
        fill(s, z, 1, 5, 15, 5, 15)
    fill(s, 4, 1, 20, 30, 20, 30)
    s.labels.data[4, 5:15, 5:15] = 0
    before = np.array(s.labels.data, copy=True)
    s.set_slice(4)
    label_id, start = s.propagation_seed(1)
    steps = [next(s.propagate(start, directions=(-1,)))]  # cancelled after slice 3
    s.commit_repropagation(label_id, 4, -1, steps, complete=False)
    after = np.asarray(s.labels.data)
    assert (after[3, 21:29, 21:29] == 1).all() and not (after[3, 5:15, 5:15] == 1).any()
    np.testing.assert_array_equal(after[:3], before[:3])  # not reached: the old object stays
    np.testing.assert_array_equal(after[4:], before[4:])


def rimmed_volume():
    """A bright 10x10 object on slices 1-7 of a dark stack; the segmenter returns it with a 2 px dark rim."""
    stack = np.zeros((9, 40, 40), np.float32)
    stack[1:8, 12:22, 12:22] = 100.0
    stack[5:8, 15:18, 15:18] = 0.0  # a dark core past the committed slice: cut by the range, filled back
    calls = []

    def segment(z, box, **_):
        calls.append(np.asarray(box).tolist())
        mask = np.zeros((40, 40), bool)
        if stack[z].max() > 0:
            mask[10:24, 10:24] = True  # object + rim
        return mask, 1.0

    return stack, segment, calls


def test_trim_writes_the_masks_less_what_lies_outside_the_object_intensities_and_keeps_the_run():
    stack, segment, calls = rimmed_volume()
    start = stack[4] > 0
    plain, plain_result = run_propagation(propagate(segment, 4, start, 9, stack=stack, rules=StopRules(min_area=1)))
    plain_boxes = list(calls)
    calls.clear()
    trimmed, trimmed_result = run_propagation(propagate(segment, 4, start, 9, stack=stack, trim=True,
                                                        rules=StopRules(min_area=1)))
    # the rim is gone from what is written; the dark core, a hole once cut, is filled back
    assert [s.z for s in trimmed] == [s.z for s in plain] == [5, 6, 7, 3, 2, 1]
    for step in trimmed:
        np.testing.assert_array_equal(step.mask, stack[4] > 0)
    assert all(s.mask.sum() == 14 * 14 for s in plain)
    # the next slice is prompted from the model's own mask, so the boxes and where it stops do not change
    assert calls == plain_boxes
    assert trimmed_result.stopped == plain_result.stopped


def test_trim_keeps_the_model_mask_where_the_range_misses_most_of_it_and_needs_the_stack():
    from napari_qlora_minisam.volume import trim_to_intensity

    image = np.zeros((20, 20), np.float32)
    image[5:15, 5:15] = 50.0
    mask = np.zeros((20, 20), bool)
    mask[4:16, 4:16] = True
    np.testing.assert_array_equal(trim_to_intensity(image, mask, (40.0, 60.0)), image > 0)
    # a range that keeps under 30 % of the mask says nothing about this slice: the mask stays as it was
    np.testing.assert_array_equal(trim_to_intensity(image, mask, (200.0, 300.0)), mask)
    with pytest.raises(InputError, match="needs the image stack"):
        next(propagate(lambda z, box: (mask, 1.0), 1, mask, 3, trim=True))


@pytest.mark.parametrize("direction, erased, kept", [(1, [5, 6, 8], range(0, 5)), (-1, [0, 1, 2, 3], range(4, 9))])
def test_erase_beyond_ends_the_object_on_the_slice_in_view(direction, erased, kept):
    s = volume_session()
    for z in range(9):
        if z != 7:  # a gap: slice 7 does not hold the object
            fill(s, z, 1, 5, 15, 5, 15)
    fill(s, 6, 2, 30, 36, 30, 36)  # another object beyond
    before = np.array(s.labels.data, copy=True)
    assert s.set_slice(4)
    held, pixels = s.erase_beyond(1, direction)
    assert held == erased and pixels == 100 * len(erased)
    after = np.asarray(s.labels.data)
    for z in erased:
        assert not (after[z] == 1).any()
    for z in kept:  # the slice in view and the other side keep the object
        np.testing.assert_array_equal(after[z], before[z])
    np.testing.assert_array_equal(after == 2, before == 2)
    s.labels.undo()  # one undo step
    np.testing.assert_array_equal(s.labels.data, before)
    assert s.erase_beyond(9, direction) == ([], 0)  # an object that is not there: nothing changes
    for label_id in (None, 0):
        with pytest.raises(InputError, match="Pick the object"):
            s.erase_beyond(label_id, direction)
    with pytest.raises(InputError, match="3D"):
        AnnotationSession(np.zeros((8, 8), np.float32)).erase_beyond(1, direction)
