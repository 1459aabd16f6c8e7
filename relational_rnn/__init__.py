"""relational_rnn: the application around the models of this library -- training on the N-th
Farthest task, run folders, checkpoints, figures and the command line.

The models live in the top-level modules (``relational_rnn_cell``, ``relational_memory``,
``lstm_baseline``, ``attention``, ``layers``, ``optimizer``) and the task in ``nth_farthest``;
this package only imports them (models <- application <- command line).  One idea per module:

* ``config``      typed run configuration (ModelSizes, TrainSettings, RunConfig)
* ``registry``    the model kinds (class, label, title, colour, sizes)
* ``presets``     the starting configurations
* ``curriculum``  curriculum phases and the Curriculum that owns the phase and its gate
* ``run_folder``  file names and every read and write of a run folder
* ``checkpoint``  save_checkpoint / load_checkpoint
* ``optimization``, ``evaluation``, ``progress``, ``parallel`` (``--workers``), ``threads``
* ``mpi``         ``mpiexec -n N``: each batch shared by MPI ranks (mpi4py, imported only
                  under an MPI launcher)
* ``trainer``     train_model: the loop over the collaborators above
* ``outputs``, ``plots``, ``report``  figures, results.json and tables
* ``memory_trace``, ``memory_report``  the memory demo's tracing, analysis and text
* ``demo_training``  the memory demo's small models and their training loop
* ``cli_parser``, ``cli_run``, ``cli``  the command line (``nth-farthest``)

``load_checkpoint`` is here for scripts: ``model, info = load_checkpoint("runs/quick/rmc")``.
"""
from relational_rnn.checkpoint import load_checkpoint

__all__ = ["load_checkpoint"]
