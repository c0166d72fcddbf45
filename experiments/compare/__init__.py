"""``mixerlab compare``: tables, curves and a report over finished runs, aggregated over seeds.

Reads every ``results.json`` below the given paths (``runs``), groups finished runs by mixer or by
any config keys and aggregates over seeds (``aggregate``). When a group holds a grid of the
--best-over keys (the learning rate by default) it keeps the grid point with the best mean on the
selection metric, as Zoology reports MQAR: RNN and conv mixers are learning-rate sensitive, so
one shared lr would compare tuning rather than mixers. The pick is printed and written with every
table. Each group gets a 95% interval over its seeds, a mark (separated from the best group or
within noise) and a rank that ties share (``significance``). Failed and unfinished runs are
listed apart, with their error, so a crashed seed never silently shrinks a mean. ``--also`` adds
columns for further metrics (``val/acc@*`` for every validation set of a task), taken at the end
of training from the same runs. Each group's curve of every logged metric is the seeds' mean
with a band, from the runs' ``metrics.csv`` (``history``). The chance levels the runs recorded
(what learning nothing scores) are named in the tables, drawn as dashed lines, and groups that do
not beat them are flagged "at chance" (``chance``). Runs of a benchmark suite's tasks (MAD's
``mad_*``) also get the suite's score per mixer (``suite``), and can sit beside a stored
reference of the suite's baselines, checked against its protocol and its code (``reference``,
``code_version``).

Outputs in ``--out`` (default ``<first PATH>/comparison``): a table in the terminal
(``terminal``), ``comparison.csv``, ``comparison.md``, one PNG per registered plot (``plots/``,
one file each) (``outputs``) and a self-contained ``report.html`` with a menu over the curves of
every logged metric (``report``). What they all read is in ``comparison``, the data types; the
command line is ``mixerlab.experiments.cli.compare``.
"""
