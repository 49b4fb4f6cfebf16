from neuromask_onnx.cli import run

run()
