"""Open napari with the MiniSAM widget docked on a real sample, segmenting with the bundled MiniSAM.

    python -m napari_qlora_minisam.demo                 # cardiac MRI slice
    python -m napari_qlora_minisam.demo lung_ct_volume  # chest CT volume (3D propagation)
    python -m napari_qlora_minisam.demo pancreas_ct
    python -m napari_qlora_minisam.demo --model litemedsam  # its teacher, also bundled

Needs the ``napari`` extra (``pip install napari-qlora-minisam[napari]``). Qt is imported only inside
``main`` (via ``_qt.demo``), so importing this module stays cheap.
"""

from __future__ import annotations

import sys


def main(argv=None) -> None:
    from ._qt.demo import run

    run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
