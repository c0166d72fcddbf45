"""One run, from a composed config to a trained run folder, in plain Python (no command line):
the config checked (``schema``, with ``config_values`` and ``mixer_node``), the model sized to a
budget (``budget``) and built with the rest of the run (``build``), the run folder claimed for
this config (``run_folder``) and the checkpoint the run starts from loaded (``start_checkpoint``),
then trained (``train``)."""
