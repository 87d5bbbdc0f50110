"""mkdocs hooks (``hooks:`` in mkdocs.yml) for the API reference.

The docstrings are written for reading in the source, with Sphinx roles (:class:`BSO`,
:func:`~bso_snn.optim.make_optimizer`). mkdocstrings renders the backticked part as code and leaves
the role name in front of it; this drops the role (and Sphinx's ``~`` shortening marker) so the
page shows just the name.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const|ref|math):(<code>)~?")


def strip_sphinx_roles(html: str) -> str:
    """``:class:<code>~a.B</code>`` -> ``<code>a.B</code>``."""
    return _ROLE.sub(r"\1", html)


def on_page_content(html: str, **kwargs) -> str:
    return strip_sphinx_roles(html)
