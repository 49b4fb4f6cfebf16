from neuromask_onnx.cli import app

app()
