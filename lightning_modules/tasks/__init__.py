"""mixerlab's tasks: LightningDataModules with one contract, a registry by short name.

    from mixerlab.lightning_modules.tasks import build_task, available_tasks
    dm = build_task("mqar", seed=0, cache_dir=None, vocab_size=64)

Importing this package imports every public module in it, so a built-in task is one file whose
``@register_task`` runs on import (plus its ``conf/task/<name>.yaml``), and no list of built-ins
is written anywhere; plugins register through the entry-point group ``mixerlab.tasks``.
"""

from mixerlab.lightning_modules.tasks.base import (
    TaskDataModule,
    available_tasks,
    build_task,
    describe_task,
    get_task_class,
    register_task,
    task_arguments,
)
from mixerlab.mixers.registry import import_public_modules

import_public_modules(__name__, __path__)

__all__ = [
    "TaskDataModule",
    "available_tasks",
    "build_task",
    "describe_task",
    "get_task_class",
    "register_task",
    "task_arguments",
]
