"""LoRA fine-tuning of a distilled student (``make finetune RUN=<run> DATA=<concept>``).

The frozen base is the student of a finished distillation run (its generator's
weights; a LoRA run's generator adapter merged in), nothing else.  One new LoRA
adapter is trained on a new concept with the plain denoising objective of the
student's family (flow matching, as the scale's teacher was trained) at the
student's own times, optionally with CFG applied to the student's prediction
inside the loss (``train_guidance``: the thing practitioners are warned about).

  objective.py  the loss and the guided prediction (pure functions)
  config.py     the fine-tune's settings (SET="lora.rank=8 lr=1e-4 train_guidance=0 steps=200")
  data.py       what DATA names: <dataset>:<class> on fashion / mnist, a captioned folder on Z-Image
  student.py    the run's student as a frozen base with one adapter (and one new label row)
  evaluate.py   the curves (variance, saturation, HF excess, adherence to the new and old classes,
                classifier FD of the old ones) and the guidance x steps sample grids
  train.py      the run folder and the training loop
"""
