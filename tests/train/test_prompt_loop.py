"""Prompt-in-the-loop distillation: corrective clicks where student and teacher masks disagree."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from minisam_train.training.prompt_loop import LoopInputs, PromptLoop, disagreement_clicks
from minisam_train.training.student import StudentForDistillation, build_student_net

from .test_distill import RESUME_ARGS, _cfg, _run, setup  # noqa: F401 - the module fixture


def _logits(on: torch.Tensor) -> torch.Tensor:
    return torch.where(on, 5.0, -5.0)


def test_clicks_fall_where_masks_disagree_with_the_teachers_label():
    size = 16
    left = torch.zeros(size, size, dtype=torch.bool)
    left[:, :8] = True
    everything = torch.ones(size, size, dtype=torch.bool)
    nothing = torch.zeros(size, size, dtype=torch.bool)
    teacher = _logits(torch.stack([left, left, left]))
    student = _logits(torch.stack([everything, nothing, left]))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        rows, yx, labels = disagreement_clicks(student, teacher, g)
        assert rows == [0, 1]  # the third mask agrees everywhere: no click
        assert yx[0, 1] >= 8 and labels[0] == 0  # student on where the teacher is off: a negative click
        assert yx[1, 1] < 8 and labels[1] == 1  # student off where the teacher is on: a positive click
    # a student at another resolution is brought onto the teacher's grid first
    rows, yx, _ = disagreement_clicks(_logits(torch.ones(1, 8, 8, dtype=torch.bool)), teacher[:1], g)
    assert rows == [0] and yx[0, 1] >= 8


def _tiny_student():
    net = build_student_net("tiny_hf_sam_small", seed=0)
    return net


def test_a_student_equal_to_its_teacher_gets_the_teachers_refined_masks():
    from minisam_train.training.student import teacher_decoder_state

    class _Hf:  # teacher_decoder_state reads a backend: an HF net and its kind
        kind = "hf"
        peft_model = None

        def __init__(self, net):
            self.net = net

    student = _tiny_student().eval()
    loop = PromptLoop(student, teacher_decoder_state(_Hf(student)), rounds=2)
    pixels = torch.randn(2, 3, 256, 256)
    boxes = [torch.tensor([[40.0, 40.0, 180.0, 200.0], [10.0, 20.0, 90.0, 120.0]]), torch.tensor([[0.0, 0, 255, 255]])]
    model = StudentForDistillation(student)
    with torch.no_grad():
        emb, logits = model(pixels, boxes)
    # a teacher that disagrees: the student's own masks, flipped
    teacher_logits = [-lg[:, 0] for lg in logits]
    g = torch.Generator().manual_seed(1)
    emb2, s_all, t_extra = model(pixels, boxes, LoopInputs(loop, emb, teacher_logits, g))
    for i in range(2):
        n_box = boxes[i].shape[0]
        extra = s_all[i][n_box:, 0]
        assert 1 <= extra.shape[0] <= 2 * n_box  # one refined mask per prompt and round that disagreed
        assert extra.shape == t_extra[i].shape
        # same decoder, same embedding, same prompt (box + clicks in the same frame): same masks
        torch.testing.assert_close(extra, t_extra[i], atol=1e-4, rtol=1e-4)
    # the refined masks are part of the student's graph: the encoder learns from them
    sum(s[boxes[i].shape[0]:].sum() for i, s in enumerate(s_all)).backward()
    grad = student.vision_encoder.patch_embed.projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_click_positions_map_the_mask_grid_onto_the_input_frame():
    student = _tiny_student()
    state = {k: v for k, v in student.state_dict().items()
             if k.startswith(("prompt_encoder.", "mask_decoder.", "shared_image_embedding."))}
    loop = PromptLoop(student, state, rounds=1)
    assert loop.teacher.vision_encoder is None and not any(p.requires_grad for p in loop.teacher.parameters())
    teacher = torch.full((1, 64, 64), -5.0)
    teacher[0, 10, 20] = 5.0  # the one pixel where the teacher's mask is on
    student_masks = torch.full((1, 64, 64), -5.0)
    prompt = loop._add_click(None, student_masks, teacher, torch.Generator().manual_seed(0), (64, 64))
    # pixel (row 10, column 20) of a 64-grid over a 256 input: centre at x = 20.5 * 4, y = 10.5 * 4
    torch.testing.assert_close(prompt.points[0, 0], torch.tensor([82.0, 42.0]))
    assert prompt.labels.tolist() == [[1]] and prompt.rows == [0]


def test_distill_with_prompt_loop_learns_and_resumes_exactly(setup):  # noqa: F811 - the fixture
    args = (*RESUME_ARGS, "train.loop_rounds=2")
    straight = _run(_cfg(setup, "loop_straight", *args))
    assert straight["loop_rounds"] == 2
    losses = [h["loss"] for h in straight["history"]]
    assert losses[-1] < losses[0], losses
    part = _run(_cfg(setup, "loop_resumed", *args, "train.stop_after=3"))
    assert part["stopped_early"]
    _run(_cfg(setup, "loop_resumed", *args))
    a = load_file(str(setup["root"] / "loop_straight" / "model.safetensors"))
    b = load_file(str(setup["root"] / "loop_resumed" / "model.safetensors"))
    for k in a:  # the clicks are seeded by the micro-batch: a resumed run samples the same ones
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    plain = load_file(str(setup["root"] / "straight" / "model.safetensors")) if (
        setup["root"] / "straight" / "model.safetensors").exists() else None
    if plain is None:
        _run(_cfg(setup, "straight", *RESUME_ARGS))
        plain = load_file(str(setup["root"] / "straight" / "model.safetensors"))
    # the clicks change what the student learns
    assert any(not torch.equal(a[k], plain[k]) for k in a if k.startswith("vision_encoder."))
