"""Model: the SSD-ResNet50 network and everything that turns it into detections.

- ``ssd``: the network in plain PyTorch, checkpoint reading and fitting;
- ``boxes``: default boxes, box decoding and NMS as the reference does them (numpy only);
- ``backends/``: ONNX Runtime and PyTorch behind one ``predict`` interface;
- ``export``: ONNX or ``.pth`` export; ``train``: training the demo model;
- ``quantize``: INT8 / FP16 models from an FP32 ONNX model.

May import: the package root, ``data``.
"""
