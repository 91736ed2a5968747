"""Parameter models described by the strings under their fields (``tasks.described``)."""

from __future__ import annotations

import subprocess
import sys

from pydantic import Field

from tasks.described import Described


class Options(Described):
    """Some options."""

    size: int = Field(3, ge=1)
    """How many, 1 or more.

    A second paragraph."""
    name: str = Field("x", description="said in the field")
    """Not this: the field's own description wins."""
    plain: bool = False
    # a comment, then no string: no description
    after: int = 0


def test_each_field_takes_the_string_under_it():
    fields = Options.model_fields
    assert fields["size"].description == "How many, 1 or more.\n\nA second paragraph."
    assert fields["name"].description == "said in the field"
    assert fields["plain"].description is None and fields["after"].description is None
    schema = Options.model_json_schema()["properties"]
    assert schema["size"]["description"].startswith("How many") and schema["size"]["minimum"] == 1


def test_importing_the_flows_loads_no_lazily_imported_module():
    """pydantic's own attribute docstrings (Python 3.11) scan every module's __file__, which loads what
    Prefect imports lazily (docker, through prefect-aws): about 130 modules and 5 MB in each flow process."""
    code = (
        "import sys, importlib.util\n"
        "import flows.micrio_migration, flows.snapshot_harvest.flow, flows.skin_analysis, flows.miniviz_backfill\n"
        "print(type(sys.modules.get('docker')).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() in ("_LazyModule", "NoneType"), out
