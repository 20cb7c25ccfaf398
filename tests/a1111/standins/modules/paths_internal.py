"""Stand-in for modules/paths_internal.py (v1.10.1): the data and models folders.

The real module derives them from --data-dir / --models-dir; the tests set ``models_path`` to a temporary
folder before the extension is loaded.
"""
import os

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
