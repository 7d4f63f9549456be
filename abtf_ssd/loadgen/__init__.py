"""LoadGen: the round's rules and one benchmark run, from test settings to accuracy and report.

- ``rules``: LoadGen rules per round (seeds, durations, counts, ConstantStream rate and bound);
- ``options``: the options of one run (every field an ``abtf-ssd run`` flag);
- ``harness``: one run into ``<results>/<system>/ssd/<scenario>/``: its options and result, the
  find-performance values it stores;
- ``sut``: the QSL and the SUT LoadGen calls, the CTRL-C guard, starting LoadGen;
- ``rate_search``: ConstantStream find-performance, the highest rate whose tail LoadGen's bound accepts;
- ``find_rate``: that search's trials run on LoadGen, and the rate a ConstantStream run takes;
- ``dataset_checks``: what a run checks of its dataset before LoadGen starts;
- ``build``: building the automotive LoadGen of a round;
- ``accuracy``: the accuracy log -> mAP -> ``accuracy.txt``;
- ``report``: reading LoadGen's summary and detail logs, the results table; ``show``: one frame drawn.

May import: the package root, ``data``, ``model``.
"""
