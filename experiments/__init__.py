"""Experiments: each module has `get_config()` and `run(config, workdir)`; see launch.py."""
