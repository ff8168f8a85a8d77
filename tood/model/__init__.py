"""The detector, as pure tensor code and nn.Modules (imports only tood.config).

boxes.py         pure batched box ops: xyxy <-> cxcywh, IoU/GIoU, points in boxes
priors.py        per-level prior grids: points, strides, 8*stride anchors
coders.py        ltrb distances from points (anchor-free) and delta-xywh from anchors (anchor-based)
backbone.py      ResNet C3-C5 + FPN P3-P7, frozen stages and BN, the pretrained weights
heads.py         T-Head (task decomposition, M and O) and the parallel head (+ TAP); one HeadOutput
assigners.py     TAL and ATSS, batched over padded GTs (B, G, A)
fixed_assigners.py  Table 2's max-IoU (RetinaNet), FoveaBox and FCOS assignment, batched the same way
losses.py        quality focal, focal, GIoU, centerness: the TAL, ATSS, fixed and GFL pairings
detector.py      backbone + FPN + head: forward, compute_loss, postprocess
mmdet_import.py  released mmdetection / fcjian checkpoints -> ours
torch_file.py    reading a checkpoint file, with one clear error when it is not one
"""
