"""MLPerf Automotive 2D object detection (SSD-ResNet50 on Cognata): the library behind the MLC scripts."""

__version__ = "0.1.0"
