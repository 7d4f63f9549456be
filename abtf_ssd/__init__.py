"""MLPerf Automotive 2D object detection (SSD-ResNet50 on Cognata): the library behind the MLC scripts.

The package is layered by stage of the benchmark; a module imports only from its own layer or
the layers below it (``tests/test_layers.py`` checks this, docs/ARCHITECTURE.md draws it):

====================  ====================================================================
``abtf_ssd`` (root)   shared facts every stage reads: model geometry (``config``), the Cognata
                      format (``cognata``), atomic writes (``fileio``)
``data/``             synthetic frames, preprocessing, the sample store, downloads, the mAP metric
``model/``            the SSD network, box coding, backends, quantization, training, export
``loadgen/``          the round's rules, the LoadGen harness and build, accuracy, report
``submission/``       the tree writer, our checker, the official tools, the system description,
                      the automated submission plans
``mlc/``              what the MLC scripts share, the pre-flight check, ``--docker``
``cli`` (root)        the ``abtf-ssd`` command line, on top of everything
====================  ====================================================================
"""

from pathlib import Path

__version__ = "0.1.0"

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
"""Files shipped with the package: the official split CSVs, the checkpoint's key shapes, the demo weights."""
