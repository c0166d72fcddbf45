"""The package list for setuptools (everything else is in pyproject.toml): the repository root is
the package ``mixerlab`` and each source folder below it a subpackage, found from the folders so
that a new subpackage needs no list edited by hand."""

from setuptools import find_packages, setup

SOURCE_FOLDERS = ["mixers", "lightning_modules", "experiments", "conf"]

setup(
    packages=[
        "mixerlab",
        *(
            f"mixerlab.{name}"
            for name in find_packages(include=[f"{folder}*" for folder in SOURCE_FOLDERS])
        ),
    ]
)
