"""Model inference shared by the evaluation CLI and the worker: ONNX Runtime sessions, model
cards, preprocessing and class activation maps. Never imports torch."""
