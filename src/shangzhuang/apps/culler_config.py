"""jupyterhub-idle-culler's config file for the workbench (passed with --config)."""

from shangzhuang.apps.culling import culler_config

culler_config(get_config())  # noqa: F821 (provided by the culler's config loader)
