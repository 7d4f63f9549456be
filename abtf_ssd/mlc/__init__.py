"""MLC: what the scripts' ``customize.py`` files share, the pre-flight check, ``--docker``.

- ``scripts``: ``mlc_step`` and the env readers every script uses;
- ``preflight``: the one check of a ``run-abtf-inference`` request before any getter runs;
- ``container``: ``--docker``: the image plan and the request rebuilt as an ``mlcr`` command.

May import: the package root, ``data``, ``model``, ``loadgen``, ``submission``.
"""
