"""The Triton model repository (`python -m detection.export CKPT --triton-repo DIR`): its configs parse
with Triton's own protobuf definitions and describe the ONNX graph beside them."""

import onnx
import pytest
from exported_models import triton_repository
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

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
