"""mixerlab's tasks: LightningDataModules with one contract, a registry by short name.

    from mixerlab.lightning_modules.tasks import build_task, available_tasks
    dm = build_task("mqar", seed=0, cache_dir=None, vocab_size=64)

Every public module here is a registered task (``text``, ``mqar``, ...); the machinery they
share sits behind a leading ``_``: the contract and registry (``_base``), seeded synthetic
generation (``_synthetic``, ``_examples``), caching and loaders (``_loading``), the resumable
data order (``_resumable``), the text task's corpora and tokenizers (``_corpus``,
``_tokenizer``) and the one reach into ``datasets``' internals (``_datasets_adapter``).

Importing this package imports every public module in it, so a built-in task is one file whose
``@register_task`` runs on import (plus its ``conf/task/<name>.yaml``), and no list of built-ins
is written anywhere; plugins register through the entry-point group ``mixerlab.tasks``. What a
task file needs is imported from here, before the tasks are discovered.
"""

from mixerlab import import_public_modules
from mixerlab.lightning_modules.tasks._base import (
    IGNORE_INDEX,
    PAD_ID,
    RUN_ARGUMENTS,
    Baseline,
    TaskDataModule,
    available_tasks,
    build_task,
    describe_task,
    get_task_class,
    register_task,
    task_arguments,
)
from mixerlab.lightning_modules.tasks._loading import (
    check_non_negative,
    check_positive,
    measure_loader_throughput,
)
from mixerlab.lightning_modules.tasks._synthetic import (
    Part,
    SyntheticTaskDataModule,
    sample_distinct,
)

import_public_modules(__name__, __path__)

__all__ = [
    "IGNORE_INDEX",
    "PAD_ID",
    "RUN_ARGUMENTS",
    "Baseline",
    "Part",
    "SyntheticTaskDataModule",
    "TaskDataModule",
    "available_tasks",
    "build_task",
    "check_non_negative",
    "check_positive",
    "describe_task",
    "get_task_class",
    "measure_loader_throughput",
    "register_task",
    "sample_distinct",
    "task_arguments",
]
