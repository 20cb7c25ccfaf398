"""Stand-in for modules/script_callbacks.py (v1.10.1): ``on_ui_settings(callback, *, name=None)`` registers a
callback that ui_settings.py runs (``ui_settings_callback()``) only when the web UI is built, not with --nowebui."""
callbacks_ui_settings = []


def on_ui_settings(callback, *, name=None):
    callbacks_ui_settings.append(callback)


def ui_settings_callback():
    for callback in callbacks_ui_settings:
        callback()
