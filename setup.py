"""tongban: county / township / village service-station nodes with CouchDB-compatible sync."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (HERE / "shared" / "__init__.py").read_text()).group(1)

setup(
    name="tongban",
    version=VERSION,
    description="通办: county / township / village service stations with CouchDB-compatible sync",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*", "bench", "bench.*"]),
    include_package_data=True,
    package_data={"": ["templates/**/*", "templates/*", "static/**/*", "data/*.json"]},
    install_requires=[
        "flask>=3.0,<4",
        "peewee>=3.17,<5",
        "couchdb>=1.2,<2",
        "apscheduler>=3.10,<4",
        "cryptography>=42",
        "waitress>=3.0,<4",
        "click>=8.1,<9",
        "requests>=2.31,<3",
        # The catalog: .xlsx import/export, QR codes on guides and receipts.
        "openpyxl>=3.1,<4",
        "segno>=1.6,<2",
        # Cases: statutory holidays and adjusted working weekends for working-day limits.
        "chinesecalendar>=1.9",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "playwright>=1.45",
            # The linter .ci/run runs (settings in pyproject.toml).
            "ruff>=0.5",
        ],
    },
    entry_points={"console_scripts": ["tongban = shared.cli:main"]},
)
