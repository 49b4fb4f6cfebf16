from neuromask_onnx.entry import run

run()
