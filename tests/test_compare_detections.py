"""docker/compare_detections.py, the smoke stage's check of the container's /detect against detection.predict."""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "docker"))
from compare_detections import differences, main  # noqa: E402

SQUARE = {"box": [10.0, 20.0, 30.0, 40.0], "score": 0.9, "label": 2, "name": "square"}
TRIANGLE = {"box": [1.0, 2.0, 3.0, 4.0], "score": 0.6, "label": 3, "name": "triangle"}


def test_differences_name_count_label_and_box_beyond_the_tolerance():
    assert differences([SQUARE], [SQUARE], tolerance=0.0) == []
    assert differences([SQUARE, TRIANGLE], [SQUARE], tolerance=5.0) == ["2 detections served, 1 predicted"]
    assert "triangle" in differences([SQUARE], [TRIANGLE], tolerance=100.0)[0]
    moved = {**SQUARE, "box": [10.0, 20.0, 30.4, 40.0]}
    assert differences([SQUARE], [moved], tolerance=0.5) == []
    assert "0.4" in differences([SQUARE], [moved], tolerance=0.1)[0]


def write(folder: Path, multipart: list[dict], raw: list[dict], predicted: list[dict]) -> list[str]:
    (folder / "multipart.json").write_text(json.dumps({"detections": multipart}))
    (folder / "raw.json").write_text(json.dumps({"detections": raw}))
    (folder / "predictions.jsonl").write_text(json.dumps({"file": "bus.jpg", "detections": predicted}) + "\n")
    return [str(folder / name) for name in ("multipart.json", "raw.json", "predictions.jsonl")]


@pytest.mark.parametrize(
    ("predicted", "tolerance", "status"),
    [([SQUARE], "0", 0), ([SQUARE, TRIANGLE], "0", 1), ([SQUARE, TRIANGLE], "report", 0)],
)
def test_predict_differences_fail_unless_only_reported(tmp_path, capsys, predicted, tolerance, status):
    assert main([*write(tmp_path, [SQUARE], [SQUARE], predicted), "--tolerance", tolerance]) == status
    if tolerance == "report" and status == 0:
        assert "NOT ENFORCED" in capsys.readouterr().out


def test_raw_body_and_multipart_must_agree_even_when_predict_is_only_reported(tmp_path):
    assert main([*write(tmp_path, [SQUARE], [TRIANGLE], [SQUARE]), "--tolerance", "report"]) == 1


@pytest.mark.parametrize("tolerance", ["loose", "-1", ""])
def test_a_tolerance_that_is_no_number_is_refused_in_one_line(tmp_path, capsys, tolerance):
    with pytest.raises(SystemExit) as refused:
        main([*write(tmp_path, [SQUARE], [SQUARE], [SQUARE]), "--tolerance", tolerance])
    assert refused.value.code == 2 and "a number >= 0 or 'report'" in capsys.readouterr().err
