"""The Qt-free annotation session: prompts -> preview -> commit -> napari's labels history, several objects
and several images, with a tiny random SAM (code paths) and the real LiteMedSAM (the masks are right)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from napari_qlora_minisam.annotation import AHEAD, AnnotationSession, Preview, PreviewJob, SegmentationEngine
from napari_qlora_minisam.errors import InputError
from napari_qlora_minisam.prompts import SlicePrompts, box_to_rectangle, slice_objects
from napari_qlora_minisam.masks import dice, tight_box


def boxes(*xyxy, z=None) -> list[SlicePrompts]:
    rects = [box_to_rectangle(b, z) for b in xyxy]
    return slice_objects(shapes=rects, shape_types=["rectangle"] * len(rects), z=z)


def preview_now(session) -> Preview:
    """Request the preview of the session's prompts and run its job inline, as a worker would."""
    outcome = session.request_preview()
    if isinstance(outcome, PreviewJob):
        outcome = session.finish_preview(outcome, outcome.run())
    assert isinstance(outcome, Preview)
    return outcome


class BoxEngine:
    """Segments each slice as the box it is given: tests of the propagation logic, not of the model."""

    def segment_box(self, plane, intensity, box, **neighbour):
        mask = np.zeros(plane.shape, bool)
        x0, y0, x1, y1 = np.round(box).astype(int)
        mask[y0:y1 + 1, x0:x1 + 1] = True
        return mask, 1.0


@pytest.fixture(scope="module")
def tiny_engine(tiny_hf):
    return SegmentationEngine(tiny_hf)


@pytest.fixture
def session(tiny_engine):
    image = np.random.default_rng(0).random((48, 64)).astype(np.float32)
    s = AnnotationSession(image, name="img", class_names=["Liver", "Spleen"])
    s.set_engine(tiny_engine)
    s.labels = Labels(np.zeros(s.shape, np.int32))
    return s


def fake_masks(session, *rects):
    """Give the shown preview known masks (the tiny model's are random): one rectangle each (r0, r1, c0, c1)."""
    from napari_qlora_minisam.annotation import Decoded

    masks = []
    for r0, r1, c0, c1 in rects:
        m = np.zeros(session.shape[-2:], bool)
        m[r0:r1, c0:c1] = True
        masks.append(Decoded(m, 1.0))
    shown = session.preview.shown
    session.preview.shown = Preview(shown.generation, shown.z, shown.objects, tuple(masks))


def test_prompts_preview_commit_and_napari_undo(session):
    session.set_prompts(boxes([5, 5, 30, 30]))
    job = session.request_preview()
    assert isinstance(job, PreviewJob) and job.todo == [0]
    assert session.request_preview() is None and session.preview.pending  # a decode runs: asked again later
    shown = session.finish_preview(job, job.run())
    assert shown is None  # answered the older generation: not painted
    preview_now(session)
    fake_masks(session, (5, 20, 5, 25))
    result = session.commit()
    assert result.ids == [1] and result.pixels == 15 * 20
    assert result.names == {1: "Liver"} and "Committed object 1 (Liver)" in result.describe()
    [record] = session.objects()
    assert (record.id, record.name, record.pixels, record.size) == (1, "Liver", 300, None)
    session.labels.undo()  # napari's own history takes the whole commit back
    assert not session.labels.data.any() and session.objects() == []
    session.labels.redo()
    assert (session.labels.data == 1).sum() == 300


def test_several_boxes_commit_as_several_objects_in_one_undo_step(session):
    session.set_prompts(boxes([2, 2, 20, 20], [30, 10, 60, 40], [10, 25, 40, 45]))
    preview = preview_now(session)
    assert len(preview.decoded) == 3
    fake_masks(session, (2, 20, 2, 20), (10, 40, 30, 60), (15, 40, 10, 40))  # the third overlaps both
    result = session.commit()
    assert result.ids == [1, 2, 3]
    labels = session.labels.data
    assert (labels == 1).sum() == 18 * 18 and (labels == 2).sum() == 30 * 30
    assert labels[16, 15] == 1 and labels[30, 35] == 2  # earlier objects keep the overlap
    assert [r.name for r in session.objects()] == ["Liver", "Spleen", "object 3"]
    session.labels.undo()
    assert not labels.any()  # one undo step for the batch


def test_editing_one_box_decodes_only_that_box(session):
    session.set_prompts(boxes([2, 2, 20, 20], [30, 10, 60, 40]))
    preview_now(session)
    session.set_prompts(boxes([2, 2, 20, 20], [31, 10, 60, 40]))
    job = session.request_preview()
    assert job.todo == [1]
    session.finish_preview(job, job.run())
    session.set_prompts(boxes([2, 2, 20, 20], [30, 10, 60, 40]))
    assert isinstance(session.request_preview(), Preview)  # back to decoded prompts: nothing to run


def test_slice_model_and_intensity_changes_make_the_preview_stale(session, tiny_engine):
    session.set_prompts(boxes([5, 5, 30, 30]))
    preview_now(session)
    assert session.preview_is_current
    session.set_intensity("percentile")
    assert not session.preview_is_current
    assert isinstance(session.request_preview(), PreviewJob)  # another intensity: decoded anew
    other = SegmentationEngine(tiny_engine.backend)
    assert other.identity != tiny_engine.identity


def test_commit_waits_for_the_newest_preview(session):
    session.set_prompts(boxes([5, 5, 30, 30]))
    job = session.request_preview()
    assert session.commit() is None and session.commit_requested
    session.finish_preview(job, job.run())
    fake_masks(session, (5, 10, 5, 10))
    assert session.commit().ids == [1] and not session.commit_requested


def test_nothing_and_zero_pixel_commits_are_refused(session):
    with pytest.raises(InputError, match="Nothing to commit"):
        session.commit()
    session.labels.data[0:30, 0:30] = 4
    session.set_prompts(boxes([5, 5, 20, 20]))
    preview_now(session)
    fake_masks(session, (5, 20, 5, 20), (35, 40, 35, 40))  # the first wholly inside object 4
    result = session.commit()
    assert result.ids == [5] and result.written[0] is None and "Skipped object 1" in result.describe()
    preview_now(session)
    fake_masks(session, (5, 20, 5, 20))
    with pytest.raises(InputError, match="another object"):
        session.commit()
    session.labels.undo()  # the refused commit left no (empty) undo step: this undo takes object 5 back
    assert not (session.labels.data == 5).any() and (session.labels.data == 4).sum() == 900
    fake_masks(session, (5, 20, 5, 20))
    assert session.commit(overwrite=True).ids == [6]  # overwrite takes pixels from others; ids are never reused


def test_redraw_replaces_the_object_on_the_previewed_slice_only(tiny_engine):
    volume = np.random.default_rng(3).random((5, 32, 32)).astype(np.float32)
    s = AnnotationSession(volume, name="vol")
    s.set_engine(tiny_engine)
    s.labels = Labels(np.zeros(s.shape, np.int32))
    s.labels.data[:, 2:10, 2:10] = 1  # object 1 on every slice (a propagation)
    s.labels.data[2, 20:30, 0:8] = 2  # another object on the slice to correct
    s.labels.data[2, 12:14, 12:14] = 3  # ... and one inside where the new outline goes
    before = s.labels.data.copy()
    assert s.set_slice(2)
    s.set_prompts(boxes([12, 12, 24, 24], [26, 2, 30, 6], z=2))
    preview_now(s)
    fake_masks(s, (12, 20, 12, 20), (2, 6, 26, 30))  # two boxes: the object is their union on this slice
    result = s.redraw(1)
    after = s.labels.data
    assert (result.z, result.label_id, result.before, result.after) == (2, 1, 64, 64 - 4 + 16)
    assert "Redrew object 1" in result.describe() and "slice 2" in result.describe()
    assert not (after[2, 2:10, 2:10] == 1).any()  # the old outline is gone from this slice
    assert (after[2, 12:20, 12:20] == 1).sum() == 60 and (after[2, 2:6, 26:30] == 1).all()
    np.testing.assert_array_equal(after[2] == 3, before[2] == 3)  # other objects keep their pixels
    np.testing.assert_array_equal(after[2] == 2, before[2] == 2)
    for z in (0, 1, 3, 4):  # its other slices are untouched
        np.testing.assert_array_equal(after[z], before[z])
    assert s.propagation_seed()[0] == 1  # a re-propagation from here starts from the redrawn object
    s.labels.undo()  # one undo step
    np.testing.assert_array_equal(s.labels.data, before)


def test_repropagation_stops_before_a_slice_set_by_hand(tiny_engine):
    volume = np.random.default_rng(4).random((9, 32, 32)).astype(np.float32)
    s = AnnotationSession(volume, name="vol")
    s.set_engine(tiny_engine)
    s.labels = Labels(np.zeros(s.shape, np.int32))
    s.labels.data[:, 2:22, 2:22] = 1  # object 1 on every slice: a propagation, not set by hand
    assert s.set_slice(6)
    s.set_prompts(boxes([4, 4, 24, 24], z=6))
    preview_now(s)
    fake_masks(s, (4, 24, 4, 24))
    s.redraw(1)  # the user corrects slice 6
    assert s.set_slice(1)
    s.set_prompts(boxes([20, 20, 30, 30], z=1))
    preview_now(s)
    fake_masks(s, (22, 28, 22, 28))
    assert s.commit().ids == [2]  # a commit on a slice sets it by hand too
    assert s.set_by_hand(1) == [6] and s.set_by_hand(2) == [1]
    assert s.set_slice(3)
    assert s.repropagation_bound(1, 1) == 6 and s.repropagation_bound(1, -1) is None

    s.engine = BoxEngine()
    _, start = s.propagation_seed(1)
    steps = list(s.propagate(start, max_slices=2, directions=(1,)))
    assert [step.z for step in steps] == [4, 5]
    before = s.labels.data.copy()
    s.commit_repropagation(1, 3, 1, steps, until=6)
    after = s.labels.data
    np.testing.assert_array_equal(after[6:], before[6:])  # the slice set by hand and those past it: kept
    for z in (4, 5):  # the run's masks: the neighbour's box and its margin
        assert (after[z] == 1).sum() > 400 and not np.array_equal(after[z], before[z])
    with pytest.raises(InputError, match="not beyond"):
        s.commit_repropagation(1, 3, 1, [], until=2)
    for _ in range(3):  # the re-propagation, the commit, the redraw: slice 6 is no longer as the user set it
        s.labels.undo()
    assert s.set_by_hand(1) == [] and s.set_by_hand(2) == [] and s.repropagation_bound(1, 1) is None


def test_redraw_is_refused_without_an_object_and_loses_nothing(session):
    session.labels.data[0:10, 0:10] = 1
    session.labels.data[20:40, 20:40] = 2
    session.set_prompts(boxes([20, 20, 40, 40]))
    preview_now(session)
    fake_masks(session, (20, 40, 20, 40))  # wholly inside object 2
    before = session.labels.data.copy()
    for label_id, match in ((None, "Pick the object"), (0, "Pick the object"), (9, "no object 9")):
        with pytest.raises(InputError, match=match):
            session.redraw(label_id)
    with pytest.raises(InputError, match="another object"):
        session.redraw(1)
    np.testing.assert_array_equal(session.labels.data, before)  # object 1 was not erased by the refusal
    result = session.redraw(1, overwrite=True)  # overwrite: it takes them
    assert result.after == 400 and not (session.labels.data == 2).any() and (session.labels.data == 1).sum() == 400


def test_redraw_waits_for_the_newest_preview(session):
    session.labels.data[0:5, 0:5] = 1
    session.set_prompts(boxes([5, 5, 30, 30]))
    job = session.request_preview()
    assert session.redraw(1) is None and session.commit_requested and session.commit_into == 1
    session.finish_preview(job, job.run())
    fake_masks(session, (5, 10, 5, 10))
    assert session.redraw(session.commit_into).after == 25 and session.commit_into is None
    assert (session.labels.data == 1).sum() == 25  # the old 5 x 5 corner replaced, not added to


def test_manual_edits_stay_in_order_with_commits(session):
    """Commit, brush stroke, commit: undo takes them back newest first and never overwrites the stroke."""
    session.set_prompts(boxes([5, 5, 30, 30]))
    preview_now(session)
    fake_masks(session, (5, 15, 5, 15))
    session.commit()
    labels = session.labels
    labels.selected_label = 9
    labels.paint((12, 40), 9)  # the user's brush
    stroke = labels.data == 9
    assert stroke.any()
    session.set_prompts(boxes([30, 30, 60, 45]))
    preview_now(session)
    fake_masks(session, (30, 45, 30, 60))
    assert session.commit().ids == [10]
    labels.undo()
    assert not (labels.data == 10).any() and np.array_equal(labels.data == 9, stroke)
    labels.undo()
    assert not (labels.data == 9).any() and (labels.data == 1).sum() == 100
    labels.redo()
    labels.redo()
    assert (labels.data == 10).any() and np.array_equal(labels.data == 9, stroke)


def test_ids_go_on_in_a_new_labels_layer_and_names_rename_delete(session):
    session.set_prompts(boxes([5, 5, 30, 30]))
    preview_now(session)
    fake_masks(session, (5, 15, 5, 15))
    session.commit()
    session.rename(1, "left lobe")
    assert session.labels.features["name"].tolist()[-1] == "left lobe"
    with pytest.raises(InputError):
        session.rename(1, "  ")
    assert session.delete(1) == 100 and session.objects() == []
    session.labels.undo()
    assert [(r.id, r.name) for r in session.objects()] == [(1, "left lobe")]
    session.labels = Labels(np.zeros(session.shape, np.int32))  # the user deleted the layer: a new one
    preview_now(session)
    fake_masks(session, (5, 15, 5, 15))
    assert session.commit().ids == [2]


def test_decode_ahead_is_found_by_the_request_it_predicts(session):
    session.set_prompts(boxes([5, 5, 30, 30]))
    preview_now(session)
    predicted = slice_objects([[10, 10]], ["positive"], [box_to_rectangle([5, 5, 30, 30])], ["rectangle"])
    job = session.decode_ahead(predicted)
    assert job.generation == AHEAD and job.todo == [0]
    assert session.finish_preview(job, job.run()) is None  # decoded ahead: never painted as such
    session.set_prompts(predicted)
    assert isinstance(session.request_preview(), Preview) and session.preview.ahead_used == 1


def test_two_images_keep_their_own_state(tiny_engine):
    a = AnnotationSession(np.random.rand(40, 40), name="a")
    b = AnnotationSession(np.random.rand(30, 50), name="b")
    for s in (a, b):
        s.set_engine(tiny_engine)
        s.labels = Labels(np.zeros(s.shape, np.int32))
        s.set_prompts(boxes([2, 2, 20, 20]))
        preview_now(s)
    fake_masks(a, (2, 10, 2, 10))
    a.commit()
    assert a.objects() and not b.objects() and b.preview_is_current
    assert a.preview.shown.masks[0].shape == (40, 40) and b.preview.shown.masks[0].shape == (30, 50)


def test_bad_images_and_intensity(tiny_engine):
    with pytest.raises(InputError, match="RGB image stacks"):
        AnnotationSession(np.zeros((3, 20, 20, 3)), rgb=True)
    with pytest.raises(InputError, match="4 dimensions"):
        AnnotationSession(np.zeros((2, 3, 20, 20)))
    png_like = AnnotationSession(np.random.randint(0, 255, (20, 20)).astype(np.uint8))
    assert "Hounsfield" in png_like.set_intensity("ct_lung")
    assert png_like.set_intensity("minmax") is None
    hu = AnnotationSession(np.random.randint(-1024, 400, (20, 20)).astype(np.int16))
    assert hu.set_intensity("ct_lung") is None
    with pytest.raises(InputError, match="Unknown intensity"):
        hu.set_intensity("bogus")


def test_volume_slices_sizes_and_propagation_in_one_undo_step(tiny_engine):
    volume = np.random.default_rng(2).random((6, 32, 32)).astype(np.float32)
    s = AnnotationSession(volume, name="vol", spacing=(5.0, 0.5, 0.5))
    s.set_engine(tiny_engine)
    s.labels = Labels(np.zeros(s.shape, np.int32))
    assert s.set_slice(3) and not s.set_slice(3) and s.z == 3
    s.labels.data[3, 8:20, 8:20] = 1
    s.labels.data[4, 8:20, 8:20] = 1
    [rec] = s.objects()
    assert rec.slices == (3, 4) and rec.slices_text() == "3–4"
    assert rec.size == pytest.approx(288 * 5 * 0.25 / 1000) and rec.size_text(1).endswith("mL")
    label_id, start = s.propagation_seed()
    assert label_id == 1 and start.sum() == 144

    s.engine = BoxEngine()
    steps = list(s.propagate(start, max_slices=2))
    assert sorted(step.z for step in steps) == [1, 2, 4, 5]
    before = s.labels.data.copy()
    written = s.commit_propagation(label_id, steps)
    assert written > 0 and all(s.labels.data[z].any() for z in (1, 2, 4, 5))
    assert (s.labels.data[4] == before[4]).sum() >= 144  # slice 4 already held the object: kept
    s.labels.undo()  # the whole run in one step
    np.testing.assert_array_equal(s.labels.data, before)
    s2 = AnnotationSession(np.random.rand(20, 20))
    with pytest.raises(InputError, match="3D"):
        s2.propagation_seed()


@pytest.mark.slow
def test_real_litemedsam_boxes_segment_the_heart(litemedsam):
    from napari_qlora_minisam._sample_data import heart_mri

    (image, meta, _), (reference, _, _) = heart_mri()
    s = AnnotationSession(image, name="cardiac MRI", class_names=meta["metadata"]["minisam_class_names"])
    s.set_engine(SegmentationEngine(litemedsam))
    s.labels = Labels(np.zeros(s.shape, np.int32))
    lv, rv = reference == 1, reference == 3
    s.set_prompts(boxes(tight_box(lv), tight_box(rv)))
    preview = preview_now(s)
    assert dice(preview.masks[0], lv) >= 0.85 and dice(preview.masks[1], rv) >= 0.75
    result = s.commit()
    assert result.ids == [1, 2]
    assert [r.name for r in s.objects()] == ["LeftVentricle", "LeftVentricularMyocardium"]
    assert dice(s.labels.data == 1, lv) >= 0.85


def test_what_a_session_gives_to_train_an_adapter(tiny_engine):
    s = AnnotationSession(np.random.rand(6, 32, 32), name="vol")
    assert s.training_pair() is None and s.labelled_counts() == (0, 0)
    s.labels = Labels(np.zeros(s.shape, np.int32))
    assert s.training_pair() is None
    s.labels.data[1, 2:8, 2:8] = 1
    s.labels.data[4, 2:8, 2:8] = 1
    s.labels.data[4, 20:30, 20:30] = 2
    image, labels = s.training_pair()
    assert image.shape == labels.shape == (6, 32, 32) and labels.max() == 2
    assert s.labelled_counts() == (2, 2)  # two objects on two slices
    flat = AnnotationSession(np.random.rand(20, 20))
    flat.labels = Labels(np.zeros((20, 20), np.int32))
    flat.labels.data[2:5, 2:5] = 3
    assert flat.labelled_counts() == (1, 1)
