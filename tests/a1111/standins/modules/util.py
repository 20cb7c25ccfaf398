"""Stand-in for modules/util.py (v1.10.1): ``walk_files(path, allowed_extensions=None)`` yields the files
under ``path`` (following links, sorted), keeping those whose lower-cased extension is allowed."""
import os


def walk_files(path, allowed_extensions=None):
    if not os.path.exists(path):
        return
    allowed = set(allowed_extensions) if allowed_extensions is not None else None
    for root, _, files in sorted(os.walk(path, followlinks=True)):
        for filename in sorted(files):
            if allowed is not None and os.path.splitext(filename)[1].lower() not in allowed:
                continue
            yield os.path.join(root, filename)
