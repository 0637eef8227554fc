"""The sentiment model, shared by serving and training: labels, prompt templates
(and their released files), tokenization, classifiers, the ONNX runtime, the model
store. It imports only ``core``."""
