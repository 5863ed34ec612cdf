import numpy as np

from napari_qlora_minisam.masks import dice, tight_box


def test_litemedsam_box_on_real_heart_slice(litemedsam, heart_slice):
    from napari_qlora_minisam import MiniSamPredictor

    image, label = heart_slice
    lv = label == 85
    predictor = MiniSamPredictor(litemedsam)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(box=tight_box(lv), multimask=False)
    assert masks.shape == (1, *image.shape) and masks.dtype == bool
    assert scores.shape == (1,) and logits.shape == (1, 256, 256)
    assert dice(masks[0], lv) > 0.9
