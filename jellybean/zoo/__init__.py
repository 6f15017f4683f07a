"""The built-in model zoo: real PyTorch models trained here on scikit-learn's handwritten digits.

The digits workflow: a camera emits frames holding 1 to 4 digits (:mod:`.digits`); a detector
finds them and fans out one 8 x 8 crop per digit; a classifier reads each crop; an aggregator
joins the readings of a frame. Several variants per task trade accuracy for cost for real.

- :mod:`.digits`   frames and crops from ``sklearn.datasets.load_digits`` (bundled, no download)
- :mod:`.models`   the network architectures
- :mod:`.runner`   the runner protocol (batch in, fan-out lists out) and the three runner kinds
- :mod:`.registry` the registered loaders (``LOADERS``, ``load_runner``); documents name these only
- :mod:`.build`    deterministic training and the weights cache (``build_zoo``)
- :mod:`.profile`  measurement on this machine into a ``ModelZoo`` document (``profile_zoo``)

Importing this package imports nothing heavy; torch loads with the modules that need it.
"""
