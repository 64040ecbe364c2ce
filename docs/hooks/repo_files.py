"""mkdocs hooks: repository files outside ``docs/`` in the site, and Sphinx roles made plain.

The guides link to the shipped prior's model card and figures as ``../data/prior/...`` (links that
work when browsing the repository). This hook adds those files to the build under the same
relative source path, so the links resolve with ``mkdocs build --strict`` and the site shows the
images, without copying anything into ``docs/``.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

#: repository paths (globs, relative to the repo root) published in the site
REPO_FILES = ("data/prior/MODEL_CARD.md", "data/prior/*.png")


def on_files(files: Files, config) -> Files:
    docs = Path(config.docs_dir)
    repo = docs.parent
    for pattern in REPO_FILES:
        for path in sorted(repo.glob(pattern)):
            rel = path.relative_to(repo).as_posix()
            dest = rel[:-3] + "/index.html" if rel.endswith(".md") else rel
            if config.use_directory_urls is False and rel.endswith(".md"):
                dest = rel[:-3] + ".html"
            # src_uri relative to docs/ ("../data/..."), so the guides' links find the file
            file = File(f"../{rel}", str(docs), config.site_dir, config.use_directory_urls, dest_uri=dest)
            file.inclusion = InclusionLevel.INCLUDED  # a File made by hand is "undefined" (= excluded)
            files.append(file)
    return files


# Docstrings cross-reference in Sphinx style (:func:`name`); mkdocstrings renders the role as
# text before the code span. Drop the role, keep the code span.
_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj|const):(?=<code>)")


def on_page_content(html: str, page, config, files) -> str:
    return _ROLE.sub("", html)
