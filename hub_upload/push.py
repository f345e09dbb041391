"""Pushing a staged folder to the Hub: the only part of hub_upload that touches the network.

The token comes from `HF_TOKEN` or the saved login (`hf auth login`), goes to `HfApi` and nowhere
else; error messages are reduced to one line with the token blanked out, in case a library ever
echoes a request.
"""

from pathlib import Path
from typing import Optional

from huggingface_hub import CommitInfo, HfApi, constants, get_token


class PushError(RuntimeError):
    """A one-line reason the push could not happen."""


def one_line(message: str, token: Optional[str] = None) -> str:
    """Whitespace collapsed to single spaces and the token, if any, replaced by '***'."""
    message = " ".join(str(message).split())
    return message.replace(token, "***") if token else message


def resolve_token() -> str:
    """The token to push with; raises PushError before anything is staged when there is none."""
    if constants.is_offline_mode():
        raise PushError(
            "the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1); unset it to push, "
            "or stage only with --dry-run"
        )
    token = get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or stage only with --dry-run)")
    return token


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    token: str,
    commit_message: str,
    repo_type: str = "model",
    private: bool = False,
    revision: Optional[str] = None,
    create_pr: bool = False,
    space_sdk: Optional[str] = None,
    keep_remote_files: bool = False,
) -> CommitInfo:
    """create_repo (exist_ok) + upload_folder; a branch `revision` is created when missing.

    Unless `keep_remote_files`, files on the Hub that the staged folder lacks (say, an old
    pytorch_model.bin) are deleted in the same commit, so the repo ends up file for file the folder.
    """
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type=repo_type,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            delete_patterns=None if keep_remote_files else "*",  # .gitattributes is always kept
        )
    except Exception as error:  # noqa: BLE001 - network, auth and validation errors all end the push
        reason = f"pushing to {repo_type} {repo_id} failed: {type(error).__name__}: {error}"
        raise PushError(one_line(reason, token)) from None


def set_space_variables(space_id: str, variables: dict, *, token: str) -> None:
    """Space variables become the app's environment (app.py reads MODEL_ID and MODEL_REVISION)."""
    api = HfApi(token=token)
    try:
        for key, value in variables.items():
            api.add_space_variable(space_id, key, value)
    except Exception as error:  # noqa: BLE001
        reason = f"setting variables of Space {space_id} failed: {type(error).__name__}: {error}"
        raise PushError(one_line(reason, token)) from None
