"""Export of an expanded visible-infrared dataset (`dive export`): the VI set, the external
visible images and the synthetic infrared images, merged into a new tree with a manifest. A
SYSU-MM01 set (or a SynthVI world) becomes a SYSU-MM01 tree, optionally with AGW arrays and LLCM
lists (`dive.export.sysu`); an LLCM or RegDB tree becomes a tree in its own layout
(`dive.export.layouts`)."""

from dive.export.layouts import export_dataset
from dive.export.sysu import ExportConfig, map_camera

__all__ = ["ExportConfig", "export_dataset", "map_camera"]
