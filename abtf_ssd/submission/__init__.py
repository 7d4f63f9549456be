"""Submission: the tree a round's checker reads, our checker, the official tools, automated plans.

- ``tree``: the submission tree in the round's layout, from the results of runs;
- ``checker``: our implementation of the round's submission checker rules;
- ``official``: the round's official checker and TEST01 scripts run as they are;
- ``sysinfo``: the system description;
- ``plan/``: automated submission plans (format, estimate, runner, status).

May import: the package root, ``data``, ``model``, ``loadgen``.
"""
