"""Service settings from environment variables (pydantic-settings), or given to `create_app(settings=...)`."""

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from fastapi import FastAPI
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from detection.test_time_options import TestTimeOptions

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "models"
# What cameras, phones and the web send (Pillow's JPEG covers MPO, a JPEG with a second view); the rest are rarer
# parsers, each more attack surface. ICO, ICNS and CUR embed images (a PNG) whose size their directory does not
# tell: Pillow decodes the embedded image to learn it, so they are never accepted.
DEFAULT_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
UNBOUNDED_FORMATS = ("ICO", "ICNS", "CUR")
# BF16's accepted words: "auto" and the spellings pydantic reads as a boolean
# Names a setting had before, refused with the name it has now (an ignored old name would silently change nothing).
RENAMED_SETTINGS = {"model_dir": "model_paths_base", "decode_memory_bytes": "image_memory_bytes"}
RENAMED_SETTINGS_WHY = {
    "model_dir": "the folder in which relative model paths are found (MODELS_DIR is the folder of models to serve)",
    "decode_memory_bytes": "one budget bounds the decodes in flight and the images waiting for inference",
}
# DETECTOR_TEST_TIME's keys: the test-time ladder's options, and the members of an ensemble
TEST_TIME_KEYS = tuple(TestTimeOptions.__dataclass_fields__)
ENSEMBLE_KEY = "ensemble_checkpoints"
BF16_WORDS = frozenset({"auto", "true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n"})


class Settings(BaseSettings):
    """Every setting is an environment variable of the same name in capitals (e.g. `MAX_BATCH=16`)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    host: str = Field("127.0.0.1", description="Bind address; the container sets 0.0.0.0.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")

    detector_checkpoint: Path | None = Field(
        DEMO_MODEL_DIR / "demo_detector.safetensors",
        description="Detector in the resdet checkpoint format, or a torchvision Faster R-CNN .pth converted on load "
        "(its class names from DETECTOR_CLASS_NAMES; `python -m detection.convert SRC DST` once saves the "
        "conversion at every start). Empty disables /detect.",
    )
    classifier_checkpoint: Path | None = Field(
        DEMO_MODEL_DIR / "demo_classifier.safetensors",
        description="Classifier in the resdet checkpoint format. Empty disables /classify (its routes answer 503 'no "
        "classifier is configured', without Retry-After).",
    )
    # Not MODEL_DIR: beside MODELS_DIR (the folder of models to serve) that name read as its twin.
    model_paths_base: Path | None = Field(
        None,
        description="Folder in which relative DETECTOR_CHECKPOINT, CLASSIFIER_CHECKPOINT, DETECTOR_CLASS_NAMES, "
        "MODELS_DIR and MODEL_CHECKPOINTS are found (compose sets /models, the mounted folder). Default: the working "
        "directory.",
    )
    detector_class_names: Path | None = Field(
        None,
        description="For a torchvision .pth detector: a text file of its class names, one per line in label order "
        "(as `detection.convert --class-names`). Default: COCO's names for a 91-output file, else class_1..K.",
    )
    detector_name: str | None = Field(
        None,
        description="The detector's name in answers and /models. Default: the run named in the checkpoint's "
        "manifest when the file is a trainer's model.safetensors, else the file name without extension.",
    )
    classifier_name: str | None = Field(None, description="The classifier's name, as DETECTOR_NAME.")

    # Several models and hot reload (service/registry.py). The two settings above stay each kind's default.
    models_dir: Path | None = Field(
        None,
        description="A folder of checkpoints: every *.safetensors in it is served, and every int8 model of "
        "detection.quantize (*.onnx, *.xml), named by its manifest's 'name' (else as DETECTOR_NAME's default says), "
        "its kind read from the manifest. Requests pick one with ?model=.",
    )
    model_checkpoints: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="More checkpoints to serve, named and typed as in MODELS_DIR: paths separated by commas, or a "
        "JSON list.",
    )
    detector_test_time: Annotated[dict[str, dict[str, Any]], NoDecode] = Field(
        default_factory=dict,
        description="Test-time options per served detector (the ladder of docs/INFERENCE.md), as a JSON object "
        "mapping a detector's served name to its options, e.g. "
        '`{"demo_detector": {"refine_boxes": true, "test_flip": true, "test_sizes": [96, 128, 160]}}`. Keys: '
        f"{', '.join(TEST_TIME_KEYS)} (the predict CLI's flags of the same names) and ensemble_checkpoints (more "
        "checkpoints whose heads are averaged with the model's on its proposals, paths found as MODEL_CHECKPOINTS'). "
        "A detector not named runs plain (the cheapest). Needs RUNTIME=torch; /models reports each detector's.",
    )
    reload_poll_s: float = Field(
        0.0,
        ge=0,
        description="Seconds between checks of every served checkpoint file (inode, size, mtime; then its hash): a "
        "replaced file is loaded beside the old model, warmed up and swapped in. 0 turns watching off.",
    )

    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    torch_threads: int = Field(0, ge=0, description="Intra-op threads of torch; 0 keeps torch's default.")
    optimize: bool = Field(True, description="Fold BN into convs and use channels_last (bench/backbone.py).")
    # torch by default, and `make serve` and the container image ask for auto (detection/runtimes.py, docs/INFERENCE.md
    # "Runtimes and int8"): the other runtimes export the checkpoint at a first start (a minute for the demo detector,
    # minutes for an R50-FPN, on 2 cores), which every app a test builds would pay or need a cache for, and eager
    # PyTorch is the reference the one-inference-path tests hold every runtime to. A deployment chooses auto.
    runtime: Literal["torch", "auto", "torch-compile", "onnxruntime", "openvino"] = Field(
        "torch",
        description="What runs the network of every served checkpoint, detector and classifier alike: torch (eager), "
        "auto (OpenVINO where installed, else ONNX Runtime, else torch; `make serve` and the container set it), "
        "torch-compile, onnxruntime or openvino, which run on the CPU (with a GPU as DEVICE, auto is eager PyTorch "
        "on it and the others are refused). A first start exports each checkpoint into RESDET_CACHE (default "
        "~/.cache/resdet) while /readyz answers 503 saying so. An int8 model of detection.quantize runs under the "
        "runtime it was checked with. /models reports what runs each model and why.",
    )
    # Not the paper (fp32): bf16 inference where the hardware computes it moved a real-image detector's AP by
    # +0.22 points (budget 0.3); the R50-FPN runs 3.0-3.6x faster on an AVX512-BF16 CPU (docs/BENCHMARKS.md, "bf16").
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="Inference in bfloat16 autocast: auto (bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, fp32 "
        "elsewhere, where bf16 is emulated and slower), true, or false (fp32). /models reports each model's precision.",
    )

    max_batch: int = Field(8, ge=1, le=256, description="Most images in one forward pass; 1 turns batching off.")
    max_batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="Longest wait for a batch to fill.")
    max_queue: int = Field(64, ge=1, description="Images waiting for inference before 503 + Retry-After.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503.")
    warmup: bool = Field(True, description="Run each model once before /readyz turns 200.")

    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest request body; larger is 413.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest width*height, read from the header: 413.")
    max_files: int = Field(16, ge=1, description="Most files in one batch request.")
    image_formats: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_IMAGE_FORMATS),
        description="The image formats decoded (Pillow's names, comma-separated); any other is refused with 415 "
        "before its header is parsed. Each format is a parser facing strangers: fewer is safer.",
    )
    decode_workers: int = Field(
        2, ge=1, le=64, description="Decoding processes: every upload is decoded in one, never in the server process."
    )
    # Not DECODE_MEMORY_BYTES (refused, naming this one): the budget now holds the inference queue too.
    image_memory_bytes: int = Field(
        1536 * 1024 * 1024,
        ge=1,
        description="Bytes the images in flight may hold together: each decode reserves its bound from its header "
        "(22 bytes a pixel for 8-bit images, 40 for wider ones) until it ends, and each image waiting for inference "
        "what its request holds (the 8-bit source or the model-sized float input, whichever is smaller) until its "
        "batch has run. One that does not fit now answers 503 with Retry-After, one larger than all of it 413. The "
        "default holds one MAX_IMAGE_PIXELS 8-bit decode.",
    )
    decode_cpu_s: float = Field(
        3.0,
        gt=0,
        le=600,
        description="CPU seconds one decode may use (header, structure and pixels); over it, its process is killed "
        "and replaced and the upload answers 422. A 40 M pixel photograph decodes in about 1 s of CPU; a 16 MB JPEG of "
        "four million empty markers needs 4 s just to walk its header.",
    )

    api_key: str | None = Field(
        None,
        description="When set, inference routes need `Authorization: Bearer KEY` or `X-API-Key: KEY`, checked before "
        "the upload is read. Unset runs without authentication; set but empty (or with surrounding spaces) refuses "
        "to start.",
    )

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins whose browser pages may call the API (CORS), comma-separated, e.g. "
        "`https://app.example.com,http://localhost:3000`; `*` for any; preflights, answers and errors then carry the "
        "CORS headers (X-Request-ID, Retry-After and X-Detections exposed). Default: none (same origin only).",
    )

    @field_validator("image_formats", mode="before")
    @classmethod
    def _known_formats(cls, value: str | list[str] | None) -> list[str]:
        from PIL import Image  # here, not at import: settings stay cheap to import

        names = value.split(",") if isinstance(value, str) else list(value or [])
        formats = [name.strip().upper() for name in names if name.strip()]
        Image.init()
        unknown = [name for name in formats if name not in Image.OPEN]
        unbounded = [name for name in formats if name in UNBOUNDED_FORMATS]
        if unbounded:
            raise ValueError(
                f"IMAGE_FORMATS: {', '.join(unbounded)} cannot be accepted: they hold images whose size no header "
                "tells, so MAX_IMAGE_PIXELS could not be checked before decoding"
            )
        if unknown or not formats:
            raise ValueError(
                f"IMAGE_FORMATS: {', '.join(unknown) or 'none given'}; Pillow reads: {', '.join(sorted(Image.OPEN))}"
            )
        return formats

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: str | list[str] | None) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = value.split(",")
        origins = [origin.strip().rstrip("/") for origin in value if origin.strip()]
        for origin in origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com (or *)")
        return origins

    @model_validator(mode="before")
    @classmethod
    def _empty_means_unset(cls, values: dict) -> dict:
        # `CLASSIFIER_CHECKPOINT=` (empty) in a shell or compose file disables that model. Not for API_KEY:
        # an empty key there is a mistake (a missing secret), and reading it as "unset" turned auth off.
        return {key: (None if value == "" and key.lower() != "api_key" else value) for key, value in values.items()}

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_named(cls, value: object, info: ValidationInfo) -> object:
        """`MAX_BATCH=` (empty) in a shell arrives as None (`_empty_means_unset`): for a setting that has no "unset",
        say so in one line, instead of pydantic's "should be a valid integer" about an input_value of None."""
        if value is None and not _empty_is_a_value(cls.model_fields[info.field_name].annotation):
            raise PydanticCustomError(
                "empty_setting", "set but empty: give it a value, or unset it for its default ({default})",
                {"default": cls.model_fields[info.field_name].get_default(call_default_factory=True)},
            )  # fmt: skip
        return value

    @field_validator("bf16", mode="before")
    @classmethod
    def _bf16_word(cls, value: object) -> object:
        """`BF16=Auto` or ` true` as a careless hand writes them; anything else named in one line, not a union."""
        if value is None:  # BF16= (empty) arrives as None; named with the words it takes
            value = ""
        if not isinstance(value, str):
            return value
        word = value.strip().lower()
        if word not in BF16_WORDS:
            raise ValueError(f"BF16 must be auto, true or false (or 1/0, yes/no, on/off), got {value!r}")
        return word

    @field_validator("api_key")
    @classmethod
    def _key_is_usable(cls, key: str | None) -> str | None:
        if key is not None and (not key.strip() or key != key.strip()):
            problem = (
                "empty" if not key.strip() else "surrounded by spaces (headers are stripped: it could never match)"
            )
            raise ValueError(
                f"API_KEY is set but {problem}; give a key, or unset API_KEY to run without authentication"
            )
        return key

    @field_validator("model_checkpoints", mode="before")
    @classmethod
    def _path_list(cls, value: object) -> object:
        if value is None:  # MODEL_CHECKPOINTS= (empty): none
            return []
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("detector_test_time", mode="before")
    @classmethod
    def _test_time_per_model(cls, value: object) -> dict[str, dict[str, Any]]:
        return parse_detector_test_time(value)

    @model_validator(mode="before")
    @classmethod
    def _refuse_renamed_settings(cls, data: object) -> object:
        given = {key.lower() for key in data} if isinstance(data, dict) else set()
        for old, new in RENAMED_SETTINGS.items():
            if old.upper() in os.environ or old in given:
                raise ValueError(f"{old.upper()} is now {new.upper()}: {RENAMED_SETTINGS_WHY[old]}")
        return data

    @model_validator(mode="after")
    def _paths_in_model_dir(self) -> "Settings":
        if self.model_paths_base is not None:
            for field in ("detector_checkpoint", "classifier_checkpoint", "detector_class_names", "models_dir"):
                path = getattr(self, field)
                if path is not None and not path.is_absolute():
                    setattr(self, field, self.model_paths_base / path)
            self.model_checkpoints = [path if path.is_absolute() else self.model_paths_base / path
                                      for path in self.model_checkpoints]  # fmt: skip
            for options in self.detector_test_time.values():
                options[ENSEMBLE_KEY] = [str(self.model_paths_base / path) for path in options.get(ENSEMBLE_KEY, [])]
        return self

    @model_validator(mode="after")
    def _test_time_runs_eager(self) -> "Settings":
        # the rungs run the model eagerly (more passes, other pooling, averaged heads), never the exported graph
        ladder = [name for name, options in self.detector_test_time.items() if not is_plain(options)]
        if ladder and self.runtime != "torch":
            raise ValueError(
                f"DETECTOR_TEST_TIME gives {', '.join(map(repr, ladder))} test-time options, which run in eager "
                f"PyTorch only: set RUNTIME=torch (not {self.runtime}) or drop them"
            )
        return self

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> "Settings":
        if self.max_files > self.max_queue:
            raise ValueError(f"MAX_FILES ({self.max_files}) must not exceed MAX_QUEUE ({self.max_queue})")
        return self


def _empty_is_a_value(annotation: object) -> bool:
    """Whether an empty variable means something for a setting of this type: unset (None), or no items (a list,
    a mapping)."""
    return type(None) in get_args(annotation) or get_origin(annotation) in (list, dict)


def parse_detector_test_time(value: object) -> dict[str, dict[str, Any]]:
    """DETECTOR_TEST_TIME's JSON as {served name: options}, each checked by `TestTimeOptions.from_mapping` and
    given whole (defaults filled in, as /models reports them); ValueError naming the model and the problem."""
    if value is None or value == {}:  # DETECTOR_TEST_TIME= (empty): none
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"DETECTOR_TEST_TIME is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError("DETECTOR_TEST_TIME must be a JSON object mapping detector names to their options")
    parsed = {}
    for name, options in value.items():
        if not isinstance(options, dict):
            raise ValueError(f"DETECTOR_TEST_TIME: {name!r}: expected an object of options, got {options!r}")
        options = dict(options)
        members = options.pop(ENSEMBLE_KEY, [])
        if not isinstance(members, list) or not all(isinstance(path, str) and path.strip() for path in members):
            raise ValueError(f"DETECTOR_TEST_TIME: {name!r}: {ENSEMBLE_KEY} must be a list of checkpoint paths")
        try:
            whole = TestTimeOptions.from_mapping(options).to_dict()
        except ValueError as error:
            raise ValueError(f"DETECTOR_TEST_TIME: {name!r}: {error}") from None
        parsed[name] = {**whole, ENSEMBLE_KEY: members}
    return parsed


def is_plain(options: dict[str, Any]) -> bool:
    """Whether parsed DETECTOR_TEST_TIME options are the plain detector's (no rung, no ensemble)."""
    return not options[ENSEMBLE_KEY] and TestTimeOptions.from_mapping(_ladder(options)) == TestTimeOptions()


def _ladder(options: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in options.items() if key != ENSEMBLE_KEY}


def split_test_time(options: dict[str, Any]) -> tuple[TestTimeOptions, list[Path]]:
    """Parsed DETECTOR_TEST_TIME options -> (the ladder's options, the ensemble's other checkpoints)."""
    return TestTimeOptions.from_mapping(_ladder(options)), [Path(path) for path in options[ENSEMBLE_KEY]]


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings from the environment, for an app built without explicit settings."""
    return Settings()


def resolve_settings(app: FastAPI) -> Settings:
    """The settings this app runs with: those given to `create_app` (kept on `app.state`), else the environment's."""
    settings = getattr(app.state, "settings", None)
    return settings if settings is not None else get_settings()
