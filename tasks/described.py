"""Parameter models whose fields are described by the string under each one (as pydantic's
``use_attribute_docstrings``), read from the class's own source.

Why not ``use_attribute_docstrings``: on Python 3.11 pydantic finds the class's source by walking the calling
frames, and ``inspect.getmodule`` of a frame looks at every module's ``__file__``, which loads the modules
Prefect imports lazily (prefect-aws makes ``docker`` one): about 130 modules, 5 MB and 0.1 s in every flow
process. ``inspect.getsource(cls)`` finds the module by the class's ``__module__`` instead.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

from pydantic import BaseModel


def attribute_docstrings(cls: type) -> dict[str, str]:
    """``{field: the string literal right under its annotation}`` in the body of ``cls``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (e.g. built in a REPL): fields stay undescribed
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for field, doc in zip(body, body[1:], strict=False):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        ):
            docs[field.target.id] = inspect.cleandoc(doc.value.value)
    return docs


class Described(BaseModel):
    """A model whose fields without a ``description`` take the string under them as one."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        docs = attribute_docstrings(cls)
        fields = cls.__pydantic_fields__
        undescribed = [name for name in docs if name in fields and fields[name].description is None]
        for name in undescribed:
            fields[name].description = docs[name]
        if undescribed:
            cls.model_rebuild(force=True)
