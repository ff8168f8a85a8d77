"""TOOD: Task-aligned One-stage Object Detection (Feng et al., ICCV 2021), reimplemented in PyTorch.

Four rooms, each importing only the ones above it in this list (one exception: engine/tracking.py looks up
the paper rows a run reproduces in report/paper.py for the run's MLflow tags):
    config.py  every hyperparameter: frozen dataclasses, loaded and checked from params.yaml
    progress.py  progress with an ETA for long loops (a bar on a terminal, a line every 30 s in a log)
    model/     the detector: boxes, priors, coders, backbone, heads, assigners, losses, detector (+ mmdet import)
    data/      COCO-format data: dataset and loader, the shapes generator, user-folder checks, the COCO download
    engine/    running it: training (train, loop, checkpoint, runtime, runlog), pretraining, inference,
               evaluation, MLflow tracking
    report/    paper vs ours: the paper's numbers, results and statistics, tables.md, figures, complexity

Start at `model/detector.py` (backbone -> FPN -> head -> assignment -> losses); `engine/train.py` and
`engine/inference.py` are what the DVC stages in `pipeline/` call.
"""
