"""Staging a trained model (and the Gradio Space) as Hugging Face Hub repos, and pushing them.

`python -m hub_upload --model RUN/best --eval EVAL --repo-id me/pdac-ln --dry-run --stage-dir out/`
writes, file for file, what the Hub repo will hold; without `--dry-run` and with a token it pushes.
"""

from .provenance import TrainingProvenance, read_provenance
from .push import PushError, push_folder, resolve_token
from .space import stage_space
from .stage import stage_model_repo

__all__ = [
    "PushError", "TrainingProvenance", "push_folder", "read_provenance", "resolve_token",
    "stage_model_repo", "stage_space",
]
