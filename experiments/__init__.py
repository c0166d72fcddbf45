"""The application around the mixers, one subpackage per concern: ``run`` (one training run, from
a config to its run folder), ``compare`` (tables, curves and a report over finished runs),
``benchmarks`` (speed numbers) and ``cli`` (the ``mixerlab`` command, one module per command)."""
