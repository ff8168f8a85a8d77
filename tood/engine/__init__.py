"""Running the detector: training, pretraining, inference, evaluation and tracking.

train.py       one (variant, seed) run: build, resume, the epochs, and publishing under DVC
loop.py        one step and one epoch: lr schedule, loader order, forward, fp32 loss, SGD
checkpoint.py  checkpoints, RNG state, fingerprints, the keyed work folders, publishing
runtime.py     device and rank, the resolved precision, seeding, timing lines
runlog.py      losses.csv and MLflow metrics of a run, without a step twice after a resume
pretrain.py    the offline stand-in for ImageNet: a ResNet classifying generated shape crops
inference.py   a trained detector over the val set -> COCO results, alignment stats, metrics
evaluate.py    COCO box AP (pycocotools) and the Table 6 alignment analysis
tracking.py    MLflow: one run per training run, in a store pinned to the repo root
mlflow_app.py  the app pipeline.mlflow_ui serves: MLflow's own + a page opening the model-training view
curve.py       the in-run budget curve: AP on a fixed val subset every few epochs
executor.py    the runs of a train stage: a local process pool or a Slurm job array (submitit)
"""
