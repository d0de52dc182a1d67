"""The Triton model repository (`python -m detection.export CKPT --triton-repo DIR`): its configs parse
with Triton's own protobuf definitions and describe the ONNX graph beside them."""

import numpy as np
import onnx
import pytest
import torch
from exported_models import DEMO_DETECTOR, triton_repository
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from detection import load_detector
from detection.data.synthetic_shapes import render_image
from detection.images import to_float_image
from detection.predictor import Predictor
from detection.runtimes import installed, load_network

ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32,
    onnx.TensorProto.INT64: model_config_pb2.TYPE_INT64,
}


def parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def graph_tensors(values) -> dict[str, tuple[int, list[int]]]:
    """name -> (Triton dtype, dims without the batch dimension, -1 for a symbolic side)."""
    return {
        value.name: (
            ONNX_TO_TRITON[value.type.tensor_type.elem_type],
            [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim],
        )
        for value in values
    }


def config_tensors(entries) -> dict[str, tuple[int, list[int]]]:
    """As graph_tensors, from a config: dims after reshape (what the model sees), batch dimension added."""
    return {
        entry.name: (entry.data_type, [-1, *(entry.reshape.shape if entry.HasField("reshape") else entry.dims)])
        for entry in entries
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo", "classifier"])
def test_triton_configs_match_the_onnx_graph(name):
    model_dir = triton_repository(name)
    graph = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    assert all(value.type.tensor_type.shape.dim[0].dim_param for value in [*graph.input, *graph.output])
    kinds = {}
    for path in (model_dir / "config.pbtxt", model_dir / "configs" / "cpu.pbtxt"):
        config = parse(path)
        assert config.name == name and config.backend == "onnxruntime"
        assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
        assert config_tensors(config.input) == graph_tensors(graph.input)
        assert config_tensors(config.output) == graph_tensors(graph.output)
        kinds[path.name] = [group.kind for group in config.instance_group]
    assert kinds == {
        "config.pbtxt": [model_config_pb2.ModelInstanceGroup.KIND_GPU],
        "cpu.pbtxt": [model_config_pb2.ModelInstanceGroup.KIND_CPU],
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo", "classifier"])
def test_the_openvino_entry_holds_the_same_graph_and_gives_the_onnx_runtime_outputs(name, one_thread):
    """The repository's OpenVINO backend entry: a config Triton's protobuf parses, naming the graph's tensors, and
    an IR that OpenVINO loads and that answers as the ONNX Runtime entry's model.onnx does on the same inputs."""
    for runtime in ("openvino", "onnxruntime"):
        if not installed(runtime):
            pytest.skip(f"{runtime} is not installed (pip install 'resdet[runtimes,export]')")
    model_dir = triton_repository(name)
    entry = model_dir.parent / f"{name}_openvino"
    config = parse(entry / "config.pbtxt")
    graph = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    assert config.name == f"{name}_openvino" and config.backend == "openvino"
    assert config.default_model_filename == "model.xml" and (entry / "1" / "model.bin").is_file()
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert config_tensors(config.input) == graph_tensors(graph.input)
    assert config_tensors(config.output) == graph_tensors(graph.output)
    assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    openvino = load_network(entry / "1" / "model.xml", runtime="openvino")
    onnx_runtime = load_network(model_dir / "1" / "model.onnx", runtime="onnxruntime")
    assert openvino.manifest == onnx_runtime.manifest  # the resdet manifest travels into the IR
    inputs = network_inputs(name)
    for ours, theirs in zip(openvino(*inputs), onnx_runtime(*inputs), strict=True):
        assert ours.shape == theirs.shape
        if ours.is_floating_point():
            torch.testing.assert_close(ours, theirs, atol=1e-2, rtol=1e-4)
        else:
            assert torch.equal(ours, theirs)


def network_inputs(name: str) -> tuple[torch.Tensor, ...]:
    """What the network takes for two images: the Predictor's prepared, padded batch, or normalised crops."""
    if name == "classifier":
        return (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
    predictor = Predictor(load_detector(DEMO_DETECTOR)[0], device="cpu", precision="fp32", optimize=False)
    rng = np.random.default_rng(4)
    images = [to_float_image(render_image(rng, image_size=160, max_objects=3)[0]) for _ in range(2)]
    return predictor.batch([predictor.prepare(image) for image in images])
