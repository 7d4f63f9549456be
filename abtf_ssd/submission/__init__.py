"""Submission: the tree a round's checker reads, our checker, the official tools, automated plans.

- ``tree``: the submission tree in the round's layout, from the results of runs (the generator);
- ``runs``: the runs of a system as the generator reads them; ``SubmissionError``;
- ``describe``: ``systems/<system>.json``, the measurements JSON and README.md of a result;
- ``test01``: the TEST01 compliance checks and the ``TEST01/`` folder of a result;
- ``checker``: our implementation of the round's submission checker rules;
- ``layout``: what each round's checker looks for: the tree layout, names, fields, rule ids, wording;
- ``logs``: a result's logs read the way the official checker reads them;
- ``official``: the round's official checker and TEST01 scripts run as they are;
- ``sysinfo``: the system description;
- ``plan/``: automated submission plans (format, estimate, runner, status).

May import: the package root, ``data``, ``model``, ``loadgen``.
"""
