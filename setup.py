"""Package list and layout of monai-spine (the metadata and dependencies are in setup.cfg).

The repository keeps ``transforms/`` as a top-level folder (design card), but it is installed as
``monai_spine.transforms``: no generic top-level ``transforms`` package lands in site-packages.
setup.cfg cannot combine ``find:`` with a package mapped to another folder, hence this file.
Works for wheels and for ``pip install -e .`` (setuptools' editable finder maps
``monai_spine.transforms`` to the ``transforms/`` folder).
"""

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["monai_spine", "monai_spine.*"]) + [
    "monai_spine." + name for name in find_packages(include=["transforms", "transforms.*"])
]
PACKAGE_DIR = {"monai_spine.transforms": "transforms"}

if __name__ == "__main__":
    setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
