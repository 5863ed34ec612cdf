"""Gather the real medical images shipped inside packages into a slice cache for distillation.

    pip install 'napari-qlora-minisam[distill-data]'                  # pydicom-data, nilearn, dipy
    apt-get install invesalius-examples insighttoolkit5-examples      # optional Debian sources
    python scripts/gather_unlabelled.py [--out DIR] [--sources ...]   # --help for every option

See minisam_train.data.unlabelled_cache and docs/distillation.md ("Data for distillation").
"""

from minisam_train.data.unlabelled_cache import main

if __name__ == "__main__":
    main()
