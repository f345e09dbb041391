"""`python -m hub_upload --model RUN/best --repo-id ID [--eval EVAL] [--dry-run] [--space-id ID] ...`

Stages the model repo (and the Space) completely, then pushes; `--dry-run` stops after staging.
Every failure is one line on stderr and exit status 1, with nothing half-written.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .model_card import is_number
from .provenance import TRAINED_ON_CHOICES, read_provenance
from .push import PushError, one_line, push_folder, resolve_token, set_space_variables
from .space import check_space_source, stage_space
from .stage import CODE_SOURCES, code_differences, read_model_folder, stage_model_repo

DEFAULT_STAGE_ROOT = Path("hub_stage")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hub_upload", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="trained model folder (RUN/best)")
    parser.add_argument("--repo-id", required=True, help="Hub model repo, e.g. me/pdac-ln")
    parser.add_argument("--eval", type=Path, help="training.evaluate output folder (metrics.json, figures)")
    parser.add_argument("--stage-dir", type=Path, help="where to write the model repo (default: hub_stage/<repo>)")
    parser.add_argument("--space-id", help="also stage and push the Gradio Space, e.g. me/pdac-ln-demo")
    parser.add_argument("--space-stage-dir", type=Path, help="where to write the Space (default: beside --stage-dir)")
    parser.add_argument("--dry-run", action="store_true", help="stage only; no token or network needed")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    parser.add_argument("--revision", help="branch to push the model to (created if missing)")
    parser.add_argument("--create-pr", action="store_true", help="open pull requests instead of committing")
    parser.add_argument("--commit-message", help="default: names the model and its test AUC")
    parser.add_argument(
        "--trained-on", choices=TRAINED_ON_CHOICES, default="auto",
        help="training data for the card; auto reads RUN/config.yaml and the prepared dataset",
    )
    parser.add_argument(
        "--data", type=Path, help="prepared dataset the model was trained on (default: from RUN/config.yaml)"
    )
    parser.add_argument("--license", default="apache-2.0", help="license id for the model card")
    parser.add_argument(
        "--code", choices=CODE_SOURCES, default="saved",
        help="remote code to publish: the copy saved with the weights in --model (default) or today's modeling/",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing non-empty stage folders")
    parser.add_argument(
        "--keep-remote-files", action="store_true",
        help="keep files already on the Hub that the staged folder lacks (default: delete them in the same commit)",
    )
    return parser.parse_args(argv)


def default_commit_message(repo_id: str, eval_dir) -> str:
    message = f"Upload {repo_id.split('/')[-1]} with hub_upload"
    if eval_dir is not None:
        metrics = json.loads((Path(eval_dir) / "metrics.json").read_text())
        auc = metrics.get("auc_roc") or {}
        if all(is_number(auc.get(key)) for key in ("value", "ci_low", "ci_high")):
            interval = f"95% CI {auc['ci_low']:.3f}-{auc['ci_high']:.3f}"
            message += f" ({metrics.get('split', 'test')} AUC {auc['value']:.3f}, {interval})"
    return message


def list_files(folder: Path) -> str:
    return "\n".join(
        f"  {path.relative_to(folder)}  ({path.stat().st_size:,} bytes)"
        for path in sorted(folder.rglob("*")) if path.is_file()
    )


def run(args: argparse.Namespace, workspace: Path) -> None:
    for repo_id in filter(None, (args.repo_id, args.space_id)):
        validate_repo_id(repo_id)
    # Before anything is written: no token means nothing to stage for.
    token = None if args.dry_run else resolve_token()
    if args.space_id:
        check_space_source()
    model_dir, space_dir = stage(args, DEFAULT_STAGE_ROOT if args.dry_run else workspace)
    if args.dry_run:
        if args.space_id:
            print(f"at push, Space variables: MODEL_ID={args.repo_id}, MODEL_REVISION=<the model commit>")
        print("dry run: nothing pushed")
        return
    message = args.commit_message or default_commit_message(args.repo_id, args.eval)
    commit = push_folder(
        model_dir, args.repo_id, token=token, commit_message=message,
        private=args.private, revision=args.revision, create_pr=args.create_pr,
        keep_remote_files=args.keep_remote_files,
    )
    print(f"pushed model: {commit.pr_url or commit.commit_url}")
    if space_dir is not None:
        push_space(args, space_dir, commit.oid, token)


def stage(args: argparse.Namespace, stage_root: Path):
    """Stages the model repo (and with --space-id the Space) under `stage_root` unless --stage-dir and
    --space-stage-dir say where; lists what was written. Returns `(model_dir, space_dir or None)`."""
    provenance = read_provenance(args.model, args.trained_on, args.data)
    differing = code_differences(args.model, *read_model_folder(args.model))
    if differing:
        published = "the saved code" if args.code == "saved" else "today's modeling/ (--code current)"
        print(f"note: the code saved with the weights differs from modeling/ in {', '.join(differing)}; "
              f"publishing {published}")

    stage_dir = args.stage_dir or stage_root / args.repo_id.replace("/", "--")
    model_dir = stage_model_repo(
        args.model, stage_dir, repo_id=args.repo_id, provenance=provenance, eval_dir=args.eval,
        revision=args.revision, space_id=args.space_id, license=args.license, overwrite=args.overwrite,
        code=args.code,
    )
    print(f"staged model repo {args.repo_id} in {model_dir}:\n{list_files(model_dir)}")
    if not args.space_id:
        return model_dir, None
    default_space_stage = (
        stage_dir.with_name(stage_dir.name + "-space") if args.stage_dir
        else stage_root / args.space_id.replace("/", "--")
    )
    space_dir = stage_space(args.space_stage_dir or default_space_stage, model_id=args.repo_id,
                            overwrite=args.overwrite)
    print(f"staged Space {args.space_id} in {space_dir}:\n{list_files(space_dir)}")
    return model_dir, space_dir


def push_space(args: argparse.Namespace, space_dir: Path, model_commit: str, token) -> None:
    """Pushes the staged Space and points it at the model commit `model_commit` just pushed."""
    space_commit = push_folder(
        space_dir, args.space_id, token=token, repo_type="space", space_sdk="gradio",
        commit_message=f"Demo for {args.repo_id}@{model_commit[:8]}", private=args.private,
        create_pr=args.create_pr, keep_remote_files=args.keep_remote_files,
    )
    print(f"pushed Space: {space_commit.pr_url or space_commit.commit_url}")
    # The Space serves its main branch, so a pull request must not rewire the live app before review.
    variables = {"MODEL_ID": args.repo_id, "MODEL_REVISION": model_commit}
    if args.create_pr:
        settings = ", ".join(f"{key}={value}" for key, value in variables.items())
        print(f"after merging both pull requests, set Space variables {settings}")
    else:
        set_space_variables(args.space_id, variables, token=token)
        print(f"Space variables set: MODEL_ID={args.repo_id}, MODEL_REVISION={model_commit}")
    if args.private:
        print("note: the model is private; give the Space an HF_TOKEN secret with read access so it can load it")


def main(argv=None) -> int:
    args = parse_args(argv)
    # Pushing without --stage-dir stages into a temporary folder, removed afterwards.
    with tempfile.TemporaryDirectory(prefix="hub_upload-") as workspace:
        try:
            run(args, Path(workspace))
        except (PushError, HFValidationError, ValueError, OSError) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
