"""Running models outside PyTorch: ONNX export with a parity check against PyTorch, and static
INT8 quantisation of an exported model through ONNX Runtime's own quantiser."""
