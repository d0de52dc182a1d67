"""bench/paper_table9.py on generated shapes with tiny C4 detectors: every rung of the ladder runs and is scored."""

import pytest
import torch
from helpers import TINY

from bench import paper_table9
from detection import build_detector, save_detector
from detection.data import generate_synthetic

CLASSES = ["circle", "square", "triangle", "star"]


@pytest.mark.usefixtures("one_thread")
def test_the_ladder_runs_every_row_and_adds_context_only_when_given(tmp_path):
    generate_synthetic(tmp_path / "shapes", num_train=1, num_val=3, image_size=64, seed=0)
    checkpoints = {}
    for name, context in (("plain", False), ("context", True)):
        torch.manual_seed(0)
        model = build_detector(backbone="resnet18", head="c4", num_classes=4, class_names=CLASSES,
                               global_context=context, **TINY)  # fmt: skip
        checkpoints[name] = save_detector(tmp_path / f"{name}.safetensors", model=model.eval())
    common = ["--data-path", str(tmp_path / "shapes" / "coco"), "--split", "val", "--limit", "2"]
    rows = paper_table9.main(["--checkpoint", str(checkpoints["plain"]), *common])
    assert [row["row"] for row in rows] == [
        "baseline", "+ box refinement", "+ multi-scale testing", "+ test-time augmentation",
        "box voting alone (0.8)", "sliced inference (32 px tiles + full image)",
        "ensemble: the model with itself (NMS + voting)",
    ]  # fmt: skip
    # the model with itself scores as the model voted at the ensemble's 0.8 (tests/test_ensemble.py)
    assert rows[6]["AP"] == pytest.approx(rows[4]["AP"], abs=1e-3)
    for row in rows:
        assert 0 <= row["AP50"] <= 100 and 0 <= row["AP"] <= row["AP50"] and row["seconds_per_image"] > 0
    rows = paper_table9.main(
        ["--checkpoint", str(checkpoints["plain"]), "--context-checkpoint", str(checkpoints["context"]), *common]
    )
    assert [row["row"] for row in rows][2] == "+ global context"
    with pytest.raises(SystemExit, match="global context"):
        paper_table9.main(["--checkpoint", str(checkpoints["plain"]), "--context-checkpoint",
                           str(checkpoints["plain"]), *common])  # fmt: skip


def test_the_ladder_uses_maxout_for_c4_and_the_merged_pyramid_for_fpn():
    c4 = build_detector(backbone="resnet18", head="c4", num_classes=4, **TINY)
    fpn = build_detector(backbone="resnet18", head="fpn", num_classes=4, **TINY)
    c4_rows = {name: options for name, _, options in paper_table9.ladder(c4, None, pyramid=(32, 64))}
    fpn_rows = {name: options for name, _, options in paper_table9.ladder(fpn, None, pyramid=(32, 64))}
    assert c4_rows["+ multi-scale testing"].maxout_sizes == (32, 64) and not c4_rows["+ multi-scale testing"].test_sizes
    assert (
        fpn_rows["+ multi-scale testing"].test_sizes == (32, 64) and not fpn_rows["+ multi-scale testing"].maxout_sizes
    )
    assert c4_rows["+ test-time augmentation"].test_flip and c4_rows["+ test-time augmentation"].refine_boxes
    assert c4_rows["baseline"] == paper_table9.TestTimeOptions()
