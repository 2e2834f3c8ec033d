"""shangzhuang-lab: the workbench's quota and GPU figures in JupyterLab.

A prebuilt labextension (status bar item, quota panel, notifications) and this
jupyter-server extension, which the frontend talks to: it asks the quota service with the
session's hub token and reads this session's GPUs through NVML.
"""

from __future__ import annotations

try:
    from ._version import __version__
except ImportError:  # a source checkout that was never built
    __version__ = "0.0.0+unknown"

EXTENSION_NAME = "shangzhuang-lab"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": EXTENSION_NAME}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "shangzhuang_lab"}]


def _load_jupyter_server_extension(server_app) -> None:
    """Register the handlers under the server's base_url."""
    from .config import ShangzhuangLab
    from .handlers import setup_handlers

    config = ShangzhuangLab(parent=server_app)
    setup_handlers(server_app.web_app, config)
    from .publish import setup_publish_handlers

    setup_publish_handlers(server_app.web_app)  # "Publish as app" (shangzhuang.apps)
    from .activity import watch

    # A busy kernel or GPU is activity, so the hub's idle culler never stops work running.
    server_app.web_app.settings["shangzhuang_activity"] = watch(
        server_app.web_app, server_app.kernel_manager, server_app.log
    )
    where = config.quota_url or "nowhere: $SHANGZHUANG_QUOTA_URL is not set"
    server_app.log.info("shangzhuang_lab %s: quota service at %s", __version__, where)
