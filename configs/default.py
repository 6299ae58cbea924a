"""Base config of every run; variants import it and override fields.

It holds values and knows no method: a run checks config.unlearn against the
methods registered when it starts (plugins included), and run_main.py
refuses a field this config does not have.
"""

import ml_collections
from ml_collections.config_dict import placeholder


class MethodSections(ml_collections.ConfigDict):
  """`config.unlearn`: a section per method, made when first named, so that
  `--config.unlearn.<method>.<name>=...` sets a hyperparameter of any method,
  a plugin's too: ml_collections adds new fields on the command line but not
  new sections. Only attribute access makes one (`get` and `[]` do not), so
  that reading the config never changes it."""

  def __getattr__(self, attribute):
    # Dunder and private names are Python's and ml_collections' own probes.
    if (not attribute.startswith('_') and attribute not in self
        and not self.is_locked):
      self[attribute] = ml_collections.ConfigDict()
    return super().__getattr__(attribute)


def recipe_overrides() -> ml_collections.ConfigDict:
  """Fields of a training recipe; None keeps protocol §4's value for the dataset."""
  return ml_collections.ConfigDict({
      'learning_rate': placeholder(float),
      'momentum': placeholder(float),
      'epochs': placeholder(int),
      # Epochs at whose start the learning rate drops by 10x.
      'decay_epochs': placeholder(tuple),
      'batch_size': placeholder(int),
  })


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict()
  # A name/config of mufax.datasets.dataset_names(), e.g. mufac/paper.
  config.data.dataset = 'synthetic_faces/small'
  # Empty means $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  config.data.data_dir = ''
  # Folder with the source files of datasets that need them (MUFAC, MUCAC).
  config.data.manual_dir = ''
  # Train and evaluate at this size (resized on the device); 0: as stored.
  config.data.image_size = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet18'  # or resnet_tiny
  config.model.num_filters = 0  # 0: the model's own width (64 for ResNet-18)
  config.model.dtype = 'float32'  # bfloat16: mixed precision

  config.engine = ml_collections.ConfigDict()
  # How steps run (mufax/engine.py): host (the host queues each step; XLA's
  # CPU runs convolutions in a compiled loop slowly), loop (one compiled
  # loop over the steps; accelerators), or auto: host on CPU, loop elsewhere.
  config.engine.executor = 'auto'

  # Comma-separated rows of the table: original, retrain, and any registered
  # method (finetune, cf_k, neggrad, advanced_neggrad, unsir (two rows),
  # scrub, ...); or all (the paper's table), or extended (every method).
  config.methods = 'original'
  # protocol §4 recipes of the models trained from scratch.
  config.original = recipe_overrides()
  # A folder of `python -m mufax.convert` (a reference .pth): the original
  # model, instead of one trained here.
  config.original.checkpoint = ''
  config.retrain = recipe_overrides()
  # Hyperparameters that differ from a method's defaults (docs/protocol.md
  # §5.2): config.unlearn.<method>.<name>, e.g.
  # --config.unlearn.scrub.lr=0.002; a method without a section runs with
  # its defaults.
  config.unlearn = MethodSections()
  # Comma-separated .py files or module names that register more methods
  # or evaluators (README "Your own method"), loaded when the run starts.
  config.plugins = ''

  # Every row is a population of models, one per seed config.seed + k
  # (docs/evaluation.md); the engine trains them at once, in one program.
  config.population = ml_collections.ConfigDict()
  config.population.size = 1
  # True: one original (seed config.seed) that every member unlearns from,
  # each with its own seed (the NeurIPS 2023 challenge's setting); False:
  # member k unlearns from original k.
  config.population.shared_original = False
  # Device memory a population may use, in GiB; 0: what the device reports
  # (on CPU, the host's available memory shared by its devices).
  config.population.device_memory_gb = 0.0
  # Members one program call updates; 0: all at once, except on a single CPU
  # device, where members run one by one (faster there: BENCHMARKS.md §2).
  config.population.members_per_call = 0
  # JAX's persistent compilation cache; empty: <workdir>/jax_cache.
  config.compilation_cache_dir = ''
  # Models trained from scratch are saved after an epoch once this many
  # seconds have passed since the last save (0: after every epoch), and at
  # the end; a killed run resumes from the last save.
  config.checkpoint_every_s = 30.0

  # Hyperparameter search (docs/protocol.md §9): each method of
  # `methods` (comma-separated; all: the paper's with ssd, salun and
  # random_labels; extended: every method with search ranges) tries
  # `candidates` settings (its defaults, then seeded draws; or, with
  # search=grid, a grid of `grid_points` per range), each a population of
  # config.population.size seeds, and each criterion (nomus, retrain: honest;
  # peek: chooses on the answer, for comparison) adds a row of its choice.
  config.sweep = ml_collections.ConfigDict()
  config.sweep.methods = ''
  config.sweep.candidates = 8
  config.sweep.search = 'random'
  config.sweep.grid_points = 3
  config.sweep.criteria = 'nomus,retrain,peek'
  # Seeds per candidate: the first S of the population's (0: all).
  config.sweep.seeds = 0
  # Candidates costing more update steps than this fraction of retraining's
  # are not run (0: no limit).
  config.sweep.max_cost = 0.0
  # Seeds the candidates' draws and the rehearsal request.
  config.sweep.seed = 0

  # Deletion requests one after another (docs/protocol.md §10): `count`
  # requests (0: none) of `people` people each (0: as many as the forget
  # set); request 1 is the stored forget set (`first='forget'`) or drawn
  # like the others (`'drawn'`); `methods`: paper, or a list.
  config.requests = ml_collections.ConfigDict()
  config.requests.count = 0
  config.requests.people = 0
  config.requests.first = 'forget'
  config.requests.seed = 0
  config.requests.methods = 'paper'

  config.protocol = 'paper'  # or clean (protocol §8)
  config.lam = 0.5  # NoMUS weight λ of accuracy
  config.seed = 42
  # Seconds between progress lines; the host also looks at a compiled loop
  # about this often.
  config.log_every_s = 30.0
  return config

