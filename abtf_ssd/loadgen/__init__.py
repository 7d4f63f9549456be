"""LoadGen: the round's rules and one benchmark run, from test settings to accuracy and report.

- ``rules``: LoadGen rules per round (seeds, durations, counts, ConstantStream rate and bound);
- ``harness``: the SUT and QSL, one run into ``<results>/<system>/ssd/<scenario>/``;
- ``build``: building the automotive LoadGen of a round;
- ``accuracy``: the accuracy log -> mAP -> ``accuracy.txt``;
- ``report``: reading LoadGen's summary and detail logs, the results table; ``show``: one frame drawn.

May import: the package root, ``data``, ``model``.
"""
