"""Export of an expanded visible-infrared dataset (`dive export`): the VI set, the external
visible images and the synthetic infrared images, merged into a new SYSU-MM01 tree with a
manifest (and optionally AGW arrays and LLCM lists). See `dive.export.sysu`."""

from dive.export.sysu import ExportConfig, export_dataset, map_camera

__all__ = ["ExportConfig", "export_dataset", "map_camera"]
