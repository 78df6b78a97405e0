"""Dataset constants defined once; they travel into every manifest and run config."""

NUM_CLASSES = 10
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Per-channel statistics of the CIFAR-10 training set (0..1 scale), as the LDAM-DRW recipe uses.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)

# SPEC §2: class splits by frequency rank in the long-tailed training set.
SPLITS = {"many": (0, 1, 2), "medium": (3, 4, 5), "few": (6, 7, 8, 9)}
SPLIT_OF_CLASS = tuple(next(name for name, classes in SPLITS.items() if c in classes) for c in range(NUM_CLASSES))

# Cutout's square on CIFAR-10 (DeVries & Taylor 2017; BCL and ProCo train with it).
CUTOUT_SIZE = 16
