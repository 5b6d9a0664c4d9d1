"""Export GroupDNet for deployment: ONNX graphs, TensorRT engines, FLOP counts and benchmarks.

    python -m export onnx --model path/to/model            # generator.onnx + encoder.onnx (+ config.json)
    python -m export onnx --model path/to/model --fp16     # generator-fp16.onnx + encoder-fp16.onnx
    python -m export tensorrt --onnx path/to/model/generator.onnx
    python -m export flops
    python -m export.bench --preset demo --threads 2

See :mod:`export.onnx` for the graphs' inputs, outputs and metadata.
"""

from .flops import encoder_gflop, generator_gflop
from .onnx import ExportResult, export_graph, export_model, inference_copy, parity, read_metadata
from .tensorrt import TensorRTUnavailable, build_engine, tensorrt_status

__all__ = [
    "ExportResult", "TensorRTUnavailable", "build_engine", "encoder_gflop", "export_graph", "export_model",
    "generator_gflop", "inference_copy", "parity", "read_metadata", "tensorrt_status",
]
