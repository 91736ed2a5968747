"""``make demo``: the project's main job on the embedded default, against the local emulators."""
