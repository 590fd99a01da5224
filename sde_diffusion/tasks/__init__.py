"""One module per kind of sde-train run (a task): what it trains and how its run is summarized.
:data:`TASKS` maps the names :func:`sde_diffusion.app.config.task_name` reads from a config to them."""

from .autoencoder import AutoencoderTask
from .base import Drawn, Finished, Task
from .classifier import ClassifierTask
from .cold import ColdTask
from .score import ScoreTask
from .super_resolution import SuperResolutionTask

TASKS: dict[str, Task] = {task.name: task for task in (ScoreTask(), ClassifierTask(), AutoencoderTask(), ColdTask(), SuperResolutionTask())}

__all__ = ["TASKS", "AutoencoderTask", "ClassifierTask", "ColdTask", "Drawn", "Finished", "ScoreTask", "SuperResolutionTask", "Task"]
