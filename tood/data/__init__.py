"""Detection data in COCO format (imports tood.config and tood.model.boxes).

dataset.py      CocoDetection, transforms, padded-GT collate, the seeded loader, build_dataset
shapes.py       the embedded synthetic dataset `shapes` (generated, written as real COCO files)
coco_folder.py  a user's own COCO folder: validated, hashed, reported, never modified
download.py     COCO 2017: streamed, resumable, checksummed, safely extracted
"""
