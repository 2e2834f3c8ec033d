"""Shangzhuang Workbench: JupyterHub for a shared GPU estate.

In a notebook: `import shangzhuang; shangzhuang.quota()` shows what you have left.
"""

from shangzhuang import quota

__all__ = ["quota"]
