# ddmd_lab -- every target creates the virtual environment first if it is missing.
#   make ablation ARM=decoupled_hybrid [SCALE=toy2d] [STEPS=N] [SEED=S] [SET="k=v k=v"]
#   make ablation RESUME=runs/<scale>/<arm>/<run-id>   (or RESUME=auto ARM=<arm>)
#   make power CLAIM=<name>   (seeds a claim of analysis/claims.yaml needs, from its pilot runs)
#   make sweep CLAIM=<name> [SEEDS=0,1,2]   (its terms' runs: SEEDS for a pilot, else as many as make power asks)
#   make floors RUN=<run>   (its scale's noise floors: metric floor, evaluation noise; read by make report)
#   make tables|report [SCALE=fashion] [FORMAT=latex]   make dashboard [WANDB_ENTITY=you]
#   make sample RUN=<run> PROMPT="a cat"  (or SCALE=zimage SET="teacher.source=<folder>" for the teacher)
#   make gpu-check   (one GPU, < 8 min: full-size SDXL / Z-Image, random weights: memory vs plan, step vs floor, bf16 vs fp32)
#   make diagnose RUN=<run> [SAMPLES=2048]   (CA vs DM per tau bin of the final generator: <run>/diagnostics.json)
#   make export RUN=<run> [OUT=folder]   (the student as a diffusers pipeline folder + model card)
#   make eval-coco RUN=<run> COCO=/data/coco10k [CLIP_WEIGHTS=/path/open_clip_pytorch_model.bin] [HPS_WEIGHTS=/path/HPS_v2.1_compressed.pt]
#        (DMD2's protocol on its coco10k folder; PROTOCOL=val2014-seeded COCO=/data/coco for a seeded val2014 subset;
#         IMAGES=<folder> scores images made elsewhere; TEACHER_IMAGES=500 DIVERSITY=16 by default)
#   make eval-hps RUN=<run> PROMPTS=<HPDv2 benchmark/ folder> HPS_WEIGHTS=/path/HPS_v2.1_compressed.pt [PER_STYLE=800]
#   make eval-dpg   (DPG-Bench: says why it is not available offline)
#   make plan SCALE=sdxl [SET="devices=8 strategy=fsdp lora.rank=0"] [GPU_GIB=140]   (per-GPU memory, no GPU needed)
#   make embed SCALE=sdxl SET="teacher.source=<folder> data.prompts=<captions.json>"   (then runs with data.precompute=true)
#   make finetune RUN=<distilled run> DATA=mnist:7 [SET="lora.rank=8 lr=1e-4 train_guidance=0 steps=200"]
#        (a LoRA on the run's student at its own times; zimage: DATA=<folder of images with captions>)
#   make finetune-report [SCALE=fashion]   (reports/finetune/: the fine-tunes' settings over seeds, the advice's claims judged)
#   make test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARM    ?=
SCALE  ?=
RESUME ?=
RUN    ?=
SEED   ?=
STEPS  ?=
ARMS   ?=
SEEDS  ?=
CLAIM  ?=
SET    ?=
RUN_ARGS = $(if $(SCALE),--scale $(SCALE)) $(if $(STEPS),--steps $(STEPS)) $(if $(SEED),--seed $(SEED)) $(foreach kv,$(SET),--set $(kv))

# W&B never waits on the network unless the user sets WANDB_MODE=online.
export WANDB_MODE ?= offline

FORMAT ?= markdown
PROMPT ?=
PROMPTS ?=
GUIDANCE ?=
SAMPLE_STEPS ?=
COCO ?=
N ?= 10000
export CLIP_WEIGHTS  # the open_clip checkpoint file eval-coco reads (hub downloads may be unavailable)
export HPS_WEIGHTS   # HPSv2's HPS_v2.1_compressed.pt, read by eval-hps (and eval-coco, where set)
PROTOCOL ?=
IMAGES ?=
TEACHER_IMAGES ?=
DIVERSITY ?=
PER_STYLE ?=
EVAL_ARGS = $(if $(TEACHER_IMAGES),--teacher-images $(TEACHER_IMAGES)) $(if $(DIVERSITY),--diversity $(DIVERSITY))
SAMPLE_ARGS = $(if $(RUN),--run $(RUN)) $(if $(PROMPT),--prompt "$(PROMPT)") $(if $(PROMPTS),--prompts $(PROMPTS)) \
  $(if $(GUIDANCE),--guidance $(GUIDANCE)) $(if $(SAMPLE_STEPS),--sample-steps $(SAMPLE_STEPS))
WANDB_ENTITY ?=

.PHONY: setup ablation sweep power floors teacher classifier tables report dashboard notebooks spectra diagnose sample eval-coco eval-hps eval-dpg export plan gpu-check embed bench finetune finetune-report test
setup: $(VENV)/.installed

FASHION_DIR ?= /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(VENV)/.installed: pyproject.toml
	@# Fashion-MNIST comes from Debian; elsewhere set data.root to a folder with its IDX files.
	@if [ ! -d $(FASHION_DIR) ] && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; } || \
	  echo "warning: could not install dataset-fashion-mnist; the fashion scale will ask for it"; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

ablation: setup
	$(PY) -m ddmd_lab ablation $(if $(ARM),--arm $(ARM)) $(if $(RESUME),--resume $(RESUME)) $(RUN_ARGS)

sweep: setup
	$(PY) -m ddmd_lab sweep $(if $(CLAIM),--claim $(CLAIM)) $(if $(ARMS),--arms $(ARMS)) $(if $(SEEDS),--seeds $(SEEDS)) $(RUN_ARGS)

power: setup
	$(PY) -m ddmd_lab power --claim $(CLAIM)

floors: setup
	$(PY) -m ddmd_lab floors --run $(RUN)

teacher: setup
	$(PY) -m ddmd_lab teacher $(RUN_ARGS)

classifier: setup
	$(PY) -m ddmd_lab classifier $(RUN_ARGS)

tables: setup
	$(PY) -m ddmd_lab tables $(if $(SCALE),--scale $(SCALE)) --format $(FORMAT)

report: setup
	$(PY) -m ddmd_lab report $(if $(SCALE),--scale $(SCALE))

dashboard: setup
	$(PY) -m ddmd_lab dashboard $(if $(WANDB_ENTITY),--entity $(WANDB_ENTITY))

# the analysis notebooks, executed headless on the runs of SCALE (outputs kept in runs/notebooks/)
notebooks: setup
	DDMD_SCALE=$(or $(SCALE),toy2d) $(PY) -m ddmd_lab.report.notebooks runs/notebooks

spectra: setup
	$(PY) -m ddmd_lab spectra $(if $(RUN),--run $(RUN)) $(RUN_ARGS)

SAMPLES ?=
diagnose: setup
	$(PY) -m ddmd_lab diagnose --run "$(RUN)" $(if $(SAMPLES),--samples $(SAMPLES))

sample: setup
	$(PY) -m ddmd_lab sample $(SAMPLE_ARGS) $(RUN_ARGS)

eval-coco: setup
	$(PY) -m ddmd_lab eval-coco $(SAMPLE_ARGS) --coco "$(COCO)" --n $(N) $(if $(PROTOCOL),--protocol $(PROTOCOL)) \
	  $(if $(IMAGES),--images $(IMAGES)) $(EVAL_ARGS) $(RUN_ARGS)

eval-hps: setup
	$(PY) -m ddmd_lab eval-hps $(SAMPLE_ARGS) $(if $(PER_STYLE),--per-style $(PER_STYLE)) $(EVAL_ARGS) $(RUN_ARGS)

eval-dpg: setup
	$(PY) -m ddmd_lab eval-dpg

OUT ?=
export: setup
	$(PY) -m ddmd_lab export --run "$(RUN)" $(if $(OUT),--out $(OUT))

# a strategy=fsdp run's sharded checkpoint (checkpoints/final.dcp) as the single file sample / export read
.PHONY: consolidate
consolidate: setup
	$(PY) -m ddmd_lab consolidate --run "$(RUN)"

# per-GPU memory of a text-to-image recipe (real architectures on the meta device); FSDP_TEACHER=replicate
GPU_GIB ?=
FSDP_TEACHER ?=
plan: setup
	$(PY) -m ddmd_lab plan $(if $(ARM),--arm $(ARM)) $(if $(GPU_GIB),--gpu-gib $(GPU_GIB)) \
	  $(if $(FSDP_TEACHER),--fsdp-teacher $(FSDP_TEACHER)) $(RUN_ARGS)

gpu-check: setup
	$(PY) -m ddmd_lab.commands.gpu_check

# text conditions once, memory-mapped under <cache_dir>/embeddings: data.precompute=true runs load no text encoder
embed: setup
	$(PY) -m ddmd_lab embed $(RUN_ARGS)

DATA ?=
finetune: setup
	$(PY) -m ddmd_lab finetune --run "$(RUN)" --data "$(DATA)" $(foreach kv,$(SET),--set $(kv))

finetune-report: setup
	$(PY) -m ddmd_lab finetune-report $(if $(SCALE),--scale $(SCALE))

bench: setup
	$(PY) -m ddmd_lab bench $(if $(ARMS),--arms $(ARMS)) $(RUN_ARGS)

test: setup
	$(PY) -m pytest tests
