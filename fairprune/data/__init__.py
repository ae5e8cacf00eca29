"""Grouped datasets: the in-memory form, the file loaders (CSV, NPZ, image zips and folders) and the built-in demos."""

from ._dataset import GROUP_JOIN, GroupedDataset, join_groups
from ._inputs import Inputs
from ._imagefolder import IMAGE_SUFFIXES, ImageSet
from ._loaders import FORMATS, columns, load_dataset, validate_labels
from .demos import DemoInfo, demo_dataset, demo_model, get_demo, list_demos, models_dir

__all__ = ["GroupedDataset", "GROUP_JOIN", "join_groups", "Inputs"]
__all__ += ["load_dataset", "validate_labels", "columns", "FORMATS", "ImageSet", "IMAGE_SUFFIXES"]
__all__ += ["DemoInfo", "list_demos", "get_demo", "demo_dataset", "demo_model", "models_dir"]
