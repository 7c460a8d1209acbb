"""From a dataset to a signed version: algorithms, ONNX conversion, the parity gate and reference
statistics, and the training and retraining jobs with their worker processes."""
