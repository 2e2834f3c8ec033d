"""JupyterHub config for Shangzhuang: everything comes from the site config.

Plain JupyterHub traitlets a site wants beyond that can follow below, as usual.
"""

from shangzhuang.hub import configure
from shangzhuang.settings import load_settings

c = get_config()  # noqa: F821 (provided by JupyterHub)
configure(c, load_settings())
