"""mkdocs hook: serve figures committed under results/ without copying them into docs/.

The benchmark pages show `results/alignment/alignment.png`; the site gets it as `img/alignment.png`.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"img/alignment.png": "results/alignment/alignment.png"}


def on_files(files, config):
    for uri, source in FIGURES.items():
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / source)))
    return files
