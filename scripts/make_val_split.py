"""Write src/minisam_train/conf/splits_val.json: the shared splits.json plus a patient-level `val` key.

    python scripts/make_val_split.py ../shared/data/splits.json [OUT.json]

The rule is minisam_train.data.splits.derive_val_split; tests/train/test_val_split.py checks that the
committed file is what this script writes from the shared split.
"""

from minisam_train.data.splits import main

if __name__ == "__main__":
    main()
