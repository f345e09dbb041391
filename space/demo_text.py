"""What the demo's page says: the notice, the help without a model, and the maps' captions."""

NOTICE = (
    "**Research use only. Not a medical device**: not for diagnosis or treatment decisions. "
    "The maps show where the model looked, not where disease is."
)
NO_MODEL_HELP = """**No model is configured.** Point the demo at a trained model in one of these ways:

- `python space/app.py --model RUN/best` (a folder written by `training.train`);
- `MODEL_ID=<Hub id or folder> python space/app.py` (with `MODEL_REVISION=<commit>` to pin a Hub model);
- `make demo` (trains on the phantom, then serves `quickstart_output/run/best`)."""
NO_MODEL_ERROR = "No model is configured: start the app with --model PATH or set MODEL_ID."


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.0f} %" if fraction >= 0.01 or fraction == 0 else f"{100 * fraction:.1f} %"


def localisation_caption(localisation, map_name: str, gradcam_stage: int = 4) -> str:
    """One sentence on how often `map_name`'s peak fell on the lesion when the model was evaluated.

    `localisation` is `model.config.localisation` (None when never measured):
    `{"attention"|"gradcam": {"pointing_game", "pointing_game_ci": [lo, hi], "energy_in_mask",
    "n_slices", "chance", "split"}}`, Grad-CAM's with the backbone `stage` it explained then (4 when
    absent); measured on another stage than the model's `gradcam_stage` now, it says nothing of this map.
    """
    measured = (localisation or {}).get(map_name)
    if measured and map_name == "gradcam" and measured.get("stage", 4) != gradcam_stage:
        return (f"This map (backbone stage {gradcam_stage}) was never evaluated: the measured localisation is "
                f"of stage {measured.get('stage', 4)}'s Grad-CAM.")
    if not measured:
        return "This map's localisation was never evaluated: how often it points at the lesion is unknown."
    details = []
    if measured.get("pointing_game_ci"):
        low, high = measured["pointing_game_ci"]
        details.append(f"95 % CI {100 * low:.0f}-{100 * high:.0f} %")
    if measured.get("chance") is not None:
        details.append(f"chance {_percent(measured['chance'])}")
    caption = (
        f"On its evaluation ({measured.get('split', 'held-out')} split, {measured.get('n_slices', '?')} "
        f"metastatic slices), this map's peak fell on the lesion in {_percent(measured['pointing_game'])} of them"
    )
    caption += f" ({'; '.join(details)})." if details else "."
    if measured.get("energy_in_mask") is not None:
        caption += f" {_percent(measured['energy_in_mask'])} of its mass lay inside the lesion."
    return caption
